"""What a run is, kept in Redis so another shell can find it by id prefix.

Each :class:`labq.Run` writes ``labq:run:<id>:info`` when it starts (name,
testscript, host, pid, start time) and adds each queue its tasks go to.
``labq cancel RUN_ID_OR_PREFIX`` finds the run there and cancels it
(:func:`labq.client.cancel.cancel_by_id`).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import redis

from labq.errors import BrokerUnavailable, SubmitError
from labq.keys import RUN_TTL, info_key, info_pattern, run_of_info_key
from labq.redis_client import text


@dataclass(frozen=True)
class RunInfo:
    """One run as its info record tells it."""

    id: str
    name: str
    script: str
    host: str
    pid: int
    started_at: float
    queues: tuple[str, ...]
    owner: str = ""
    priority: str = "normal"


def record_start(client: redis.Redis, run_id: str, name: str, script: str, *,
                 owner: str = "", priority: str = "normal") -> None:
    """Write the run's info record (one round trip)."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(info_key(run_id), mapping={
        "name": name, "script": script, "host": socket.gethostname(), "pid": os.getpid(),
        "started_at": time.time(), "queues": "", "owner": owner, "priority": priority,
    })
    pipe.expire(info_key(run_id), RUN_TTL)
    pipe.execute()


def record_queues(client: redis.Redis, run_id: str, queues: set[str]) -> None:
    """Keep the queues the run has sent tasks to (a cancel purges them)."""
    client.hset(info_key(run_id), "queues", ",".join(sorted(queues)))


def find(client: redis.Redis, prefix: str) -> list[RunInfo]:
    """Every run whose id starts with ``prefix``, newest first."""
    if not prefix:
        raise SubmitError("a run id or the start of one is needed, got ''")
    try:
        keys = list(client.scan_iter(match=info_pattern(prefix), count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        records = pipe.execute()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot look up run {prefix!r}: {exc}") from exc
    runs = []
    for key, raw in zip(keys, records, strict=True):
        if not raw:  # expired between the scan and the read
            continue
        fields = {text(k): text(v) for k, v in raw.items()}
        run_id = run_of_info_key(text(key))
        runs.append(RunInfo(id=run_id, name=fields.get("name", ""),
                            script=fields.get("script", ""), host=fields.get("host", ""),
                            pid=int(fields.get("pid") or 0),
                            started_at=float(fields.get("started_at") or 0),
                            queues=tuple(q for q in fields.get("queues", "").split(",") if q),
                            owner=fields.get("owner", ""),
                            priority=fields.get("priority", "normal")))
    return sorted(runs, key=lambda r: r.started_at, reverse=True)
