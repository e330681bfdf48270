"""Worker heartbeats in Redis: who is alive, and self-fencing without Redis.

Every worker's main process writes ``labq:worker:{hostname}``, a hash that
expires after ``worker_ttl`` seconds, every ``worker_ttl / 5`` seconds. With
each beat it lists itself in ``labq:workers`` and prunes the ended tasks
from ``labq:running:{hostname}``. The other workers declare it dead once its
key has been missing for another ``worker_ttl / 2``, and settle its running
tasks (labq.worker.reaper). Celery's own answer, the broker's visibility
timeout, would leave the task unacknowledged for an hour.

The worker fences itself in turn: once it has gone ``0.8 * worker_ttl``
(``FENCE_AFTER``) without a successful write, it kills its running tasks. A
host cut off from Redis has so stopped touching its devices before any other
worker can declare it dead and run its idempotent tasks again elsewhere,
while a Redis restart of a few seconds costs nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from labq.fairshare.backlogs import Backlogs
from labq.keys import WORKER_PREFIX, WORKERS_KEY, running_key, worker_key
from labq.redis_client import connect
from labq.settings import Settings

log = logging.getLogger(__name__)

#: Fraction of the TTL without a successful heartbeat after which a worker
#: kills its running tasks.
FENCE_AFTER = 0.8


def dead_after(ttl: float) -> float:
    """Seconds of silence after which a worker is declared dead: its
    heartbeat's TTL, then half as long again seen missing (a heartbeat lost
    with a restarted Redis comes back within one beat)."""
    return ttl * 1.5


@dataclass(frozen=True)
class WorkerBeat:
    """The last heartbeat of one worker, as ``labq status`` shows it."""

    hostname: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    busy: int
    started_at: float
    beat_at: float

    @classmethod
    def from_hash(cls, hostname: str, raw: dict[bytes, bytes]) -> WorkerBeat:
        def get(field: str, default: str = "") -> str:
            return raw.get(field.encode(), default.encode()).decode()

        return cls(
            hostname=hostname, host=get("host"), pid=int(get("pid", "0")),
            queues=tuple(q for q in get("queues").split(",") if q),
            concurrency=int(get("concurrency", "0")), busy=int(get("busy", "0")),
            started_at=float(get("started_at", "0")), beat_at=float(get("beat_at", "0")),
        )


def read_workers(client: redis.Redis) -> list[WorkerBeat]:
    """Every worker whose heartbeat has not expired, by hostname."""
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{WORKER_PREFIX}*", count=500))
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    beats = []
    for key, raw in zip(keys, pipe.execute(), strict=True):
        if raw:  # expired between the scan and the read
            beats.append(WorkerBeat.from_hash(key[len(WORKER_PREFIX):], raw))
    return beats


#: Drops the entries of ``labq:running:<worker>`` (KEYS[1]) that ended: not
#: among the ids the main process still runs (ARGV[2:]) and written before
#: ARGV[1] (s), so a task whose start the main process has yet to hear of
#: keeps its entry.
PRUNE_RUNNING = """
local active = {}
for i = 2, #ARGV do active[ARGV[i]] = true end
local cutoff = tonumber(ARGV[1])
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local id = entries[i]
  if not active[id] then
    local ok, e = pcall(cjson.decode, entries[i + 1])
    if not ok or type(e) ~= 'table' or tonumber(e['at'] or 0) < cutoff then
      redis.call('HDEL', KEYS[1], id)
    end
  end
end
"""


class Heartbeat:
    """Write this worker's heartbeat from a daemon thread; fence when Redis is gone.

    ``info`` is called for each beat and returns the live fields
    (``queues``, ``concurrency``, ``busy``, and ``active``: the ids of the
    running tasks). ``fence`` kills the running tasks and returns how many;
    it is called once per outage.
    """

    def __init__(self, url: str, hostname: str, ttl: float, *,
                 info: Callable[[], dict[str, Any]], fence: Callable[[], int],
                 settings: Settings | None = None) -> None:
        self.hostname = hostname
        self.ttl = ttl
        #: Also record the slots for fair share (labq.fairshare).
        self.fair_share = settings.fair_share if settings is not None else False
        self.interval = ttl / 5
        self.info = info
        self.fence = fence
        # Short timeouts: a write blocked on a dead link must not delay the fence.
        self.client = connect(url, settings or Settings(), socket_timeout=self.interval,
                              socket_connect_timeout=self.interval)
        self.started_at = time.time()
        self.last_ok = time.monotonic()
        self.fenced = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"labq-heartbeat-{hostname}")

    def start(self) -> Heartbeat:
        if not self._thread.is_alive():
            self.beat()
            self._thread.start()
        return self

    def stop(self, remove: bool = True) -> None:
        """Stop beating; with ``remove``, say so at once instead of expiring."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval * 2)
        if remove:
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(worker_key(self.hostname), running_key(self.hostname))
                # Stopped cleanly: what it still listed was given back to its queue.
                pipe.hdel(WORKERS_KEY, self.hostname)
                pipe.execute()
                if self.fair_share:
                    Backlogs(self.client).unregister(self.hostname)
            except redis.RedisError as exc:
                log.warning("heartbeat of %s not removed (%s); it expires in %.0f s",
                            self.hostname, exc, self.ttl)

    def beat(self) -> bool:
        """Write one heartbeat; true when Redis took it."""
        try:
            fields = self.info()
            mapping: dict[Any, str | int | float] = {
                "host": socket.gethostname(), "pid": os.getpid(),
                "queues": ",".join(fields.get("queues", ())),
                "concurrency": int(fields.get("concurrency", 0)),
                "busy": int(fields.get("busy", 0)),
                "started_at": self.started_at, "beat_at": time.time(),
            }
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(worker_key(self.hostname), mapping=mapping)
            pipe.pexpire(worker_key(self.hostname), int(self.ttl * 1000))
            pipe.hset(WORKERS_KEY, self.hostname, self.ttl)
            # An entry younger than one beat may be a start the main process
            # has yet to hear of: it waits for the next beat.
            pipe.eval(PRUNE_RUNNING, 1, running_key(self.hostname),
                      time.time() - self.interval, *fields.get("active", ()))
            if self.fair_share:
                Backlogs.register(pipe, self.hostname, fields.get("queues", ()),
                                  int(mapping["concurrency"]), int(mapping["busy"]),
                                  dead_after(self.ttl), time.time())
            pipe.execute()
        except Exception as exc:  # never let the thread die: it also fences
            log.debug("heartbeat of %s failed: %s", self.hostname, exc)
            return False
        self.last_ok = time.monotonic()
        if self.fenced:
            log.warning("worker %s reaches Redis again; serving", self.hostname)
        self.fenced = False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.beat() or self.fenced:
                continue
            silent = time.monotonic() - self.last_ok
            if silent >= self.ttl * FENCE_AFTER:
                self.fenced = True
                try:
                    killed = self.fence()
                except Exception:
                    log.exception("worker %s could not fence its tasks", self.hostname)
                    continue
                log.error("worker %s has not reached Redis for %.1f s: killed its %d "
                          "running tasks before they are declared lost", self.hostname,
                          silent, killed)
