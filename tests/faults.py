"""Faults that tests inflict on a running stack: a host's death, a Redis restart."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone

import psutil
import redis

from labq.embedded.redis_server import RedisServer
from labq.embedded.stack import Stack
from labq.keys import starts_key


def kill_tree(proc_pid: int) -> None:
    """SIGKILL a worker's main process and every process under it, at once."""
    main = psutil.Process(proc_pid)
    procs = [main, *main.children(recursive=True)]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def restart_redis(lab: Stack, after_starts: int, run_id: str, down: float,
                  record: dict[str, datetime]) -> None:
    """Once ``after_starts`` tasks of the run have started: SIGTERM Redis,
    wait ``down`` seconds, start it again on the same data dir and port."""
    old = lab.redis
    assert old is not None and old.process is not None
    probe = redis.Redis.from_url(old.url, socket_timeout=5)
    deadline = time.monotonic() + 60
    while probe.hlen(starts_key(run_id)) < after_starts and time.monotonic() < deadline:
        time.sleep(0.05)
    probe.close()
    record["term"] = datetime.now(timezone.utc)
    old.process.send_signal(signal.SIGTERM)
    old.process.wait(timeout=30)
    time.sleep(down)
    lab.redis = RedisServer(data_dir=old.data_dir, port=old.port, password=old.password,
                            binary=old.binary).start()
    record["back"] = datetime.now(timezone.utc)
