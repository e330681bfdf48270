"""Settling the run tasks of a dead worker, from the workers that live.

Each run task a worker starts is listed in ``labq:running:<worker>`` with its
start record (labq.worker.task_base); each heartbeat prunes the ones that
ended (labq.worker.liveness). Every worker's sweep (labq.worker.parking.Waker)
calls :meth:`Reaper.sweep`: a worker in ``labq:workers`` whose heartbeat
has been gone for half its TTL more is dead. One live worker, under the
``labq:reaping:<worker>`` lock, then settles each of its tasks:

1. its leases are freed;
2. in one script (:data:`REAP_SCRIPT`): its id is fenced, so the message,
   redelivered when the host returns or the visibility timeout passes,
   never runs it again; an idempotent task that is no rerun itself is sent
   again under a new id (its own message, from kombu's ``unacked`` hash)
   and recorded in the run's registry; and its result is stored: ``lost``
   (``WorkerLostError``), or for a rerun the same naming the new id
   (``labq_rerun``), which a gathering run follows. The message leaves
   ``unacked``.

So a run's dead-worker tasks are settled whether or not a testscript is
still gathering it; the testscript only reads the results. A worker that
starts again under its name settles what its former self left, before its
first heartbeat (:meth:`Reaper.settle_former_self`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis

from labq.devices.lease import Leases
from labq.keys import (
    DONE_STREAM_MAXLEN,
    RERUN_STATUS,
    RESULT_PREFIX,
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    WORKERS_KEY,
    done_key,
    fenced_key,
    info_key,
    log_key,
    parked_key,
    reaping_key,
    reruns_key,
    running_key,
    starts_key,
    states_key,
    tasks_key,
    worker_key,
)
from labq.outcome import Status
from labq.redis_client import text
from labq.settings import Settings
from labq.worker.liveness import dead_after

log = logging.getLogger(__name__)

#: Milliseconds a reaper holds a dead worker's lock at most.
LOCK_MS = 30_000

# KEYS: running hash, fenced, starts, parked key of the task, reruns, tasks
# list, result, done stream, states, queue list (a rerun's), unacked,
# unacked index, then keys whose expiry the end renews (log, info).
# ARGV: task id, worker, retention (s), result value, labq status, new id
# ('' for none), its message, its registry entry, the old message's
# delivery tag ('' for none), done stream maxlen, '1' to store the result
# here (the backend is this Redis).
# Returns 1 when settled, 0 when the task needs nothing: fenced already,
# parked (it runs nowhere), started again on another worker, or ended.
REAP_SCRIPT = """
local t, w, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function done()
  redis.call('HDEL', KEYS[1], t)
  return 0
end
if redis.call('HEXISTS', KEYS[2], t) == 1 then return done() end
if redis.call('EXISTS', KEYS[4]) == 1 then return done() end
local start = redis.call('HGET', KEYS[3], t)
if not start then return done() end
local ok, rec = pcall(cjson.decode, start)
if not ok or type(rec) ~= 'table' or rec['worker'] ~= w then return done() end
if ARGV[11] == '1' then
  local current = redis.call('GET', KEYS[7])
  if current then
    local okm, meta = pcall(cjson.decode, current)
    if okm and type(meta) == 'table' and (meta['status'] == 'SUCCESS'
        or meta['status'] == 'FAILURE' or meta['status'] == 'REVOKED') then
      return done()
    end
  end
end
redis.call('HSET', KEYS[2], t, w)
redis.call('EXPIRE', KEYS[2], ttl)
if ARGV[6] ~= '' then
  redis.call('RPUSH', KEYS[10], ARGV[7])
  redis.call('HSET', KEYS[5], ARGV[6], t)
  redis.call('EXPIRE', KEYS[5], ttl)
  redis.call('RPUSH', KEYS[6], ARGV[8])
  redis.call('EXPIRE', KEYS[6], ttl)
end
if ARGV[9] ~= '' then
  redis.call('HDEL', KEYS[11], ARGV[9])
  redis.call('ZREM', KEYS[12], ARGV[9])
end
if ARGV[11] == '1' then
  redis.call('SETEX', KEYS[7], ttl, ARGV[4])
  redis.call('PUBLISH', KEYS[7], ARGV[4])
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[10], '*', 'task_id', t, 'status', 'FAILURE')
  redis.call('EXPIRE', KEYS[8], ttl)
  redis.call('HSET', KEYS[9], t, ARGV[5])
  redis.call('EXPIRE', KEYS[9], ttl)
  for i = 13, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
end
redis.call('HDEL', KEYS[1], t)
return 1
"""

@dataclass(frozen=True)
class Running:
    """One entry of ``labq:running:<worker>``: a run task the worker started."""

    task_id: str
    run_id: str
    task: str
    queue: str
    at: float
    idempotent: bool

    @classmethod
    def parse(cls, task_id: str, raw: str | bytes) -> Running | None:
        try:
            e = json.loads(raw)
            return cls(task_id, str(e["run"]), str(e["task"]), str(e.get("queue") or ""),
                       float(e["at"]), bool(e.get("idem")))
        except (ValueError, KeyError, TypeError):
            log.warning("running entry of task %s unreadable: %r", task_id, raw)
            return None

    @staticmethod
    def entry(run_id: str, task: str, queue: str, idempotent: bool) -> str:
        return json.dumps({"run": run_id, "task": task, "queue": queue, "at": time.time(),
                           "idem": idempotent})


class Reaper:
    """One worker's part in settling dead workers' tasks (see the module)."""

    def __init__(self, client: redis.Redis, hostname: str, settings: Settings,
                 backend: Any = None, started_at: float | None = None) -> None:
        self.client = client
        self.hostname = hostname
        self.settings = settings
        #: The result backend (labq.worker.backend.LabqRedisBackend) when it
        #: is another Redis than the broker.
        self.backend = backend if settings.backend_url != settings.broker_url else None
        #: When this worker started: its former self's tasks started before.
        self.started_at = time.time() if started_at is None else started_at
        self._script = client.register_script(REAP_SCRIPT)
        self._missing_since: dict[str, float] = {}

    def settle_former_self(self) -> int:
        """Settle what a former worker of this name (killed, then started
        again within the TTL) left running. Before this worker's first
        heartbeat, whose pruning would drop those entries."""
        return self.reap(self.hostname, before=self.started_at)

    def sweep(self) -> int:
        """Settle the tasks of every worker found dead; returns how many."""
        return sum(self.reap(worker) for worker in self.dead())

    def dead(self) -> list[str]:
        """Workers whose heartbeat has been missing long enough."""
        watched = {text(k): float(v) for k, v in self.client.hgetall(WORKERS_KEY).items()
                   if text(k) != self.hostname}
        if not watched:
            self._missing_since.clear()
            return []
        names = sorted(watched)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(worker_key(name))
        now = time.monotonic()
        dead = []
        for name, up in zip(names, pipe.execute(), strict=True):
            if up:
                self._missing_since.pop(name, None)
                continue
            since = self._missing_since.setdefault(name, now)
            if now - since >= dead_after(watched[name]) - watched[name]:
                dead.append(name)
        for gone in set(self._missing_since) - set(names):
            del self._missing_since[gone]
        return dead

    def reap(self, worker: str, before: float | None = None) -> int:
        """Settle ``worker``'s running tasks (those started before ``before``,
        when given) under its lock; returns how many were settled."""
        key = running_key(worker)
        if before is None and not self.client.set(reaping_key(worker), self.hostname, nx=True,
                                                  px=LOCK_MS):
            return 0  # another worker reaps it
        try:
            entries = [e for raw_id, raw in self.client.hgetall(key).items()
                       if (e := Running.parse(text(raw_id), raw)) is not None
                       and (before is None or e.at < before)]
            ttl = float(self.client.hget(WORKERS_KEY, worker) or self.settings.worker_ttl)
            settled = self._settle(worker, entries, ttl) if entries else 0
            if before is None:
                pipe = self.client.pipeline(transaction=False)
                pipe.hdel(WORKERS_KEY, worker)
                pipe.delete(key, reaping_key(worker))
                pipe.execute()
                self._missing_since.pop(worker, None)
        except redis.RedisError as exc:  # the lock expires; the next sweep tries again
            log.warning("could not settle the tasks of dead worker %s: %s", worker, exc)
            return 0
        if settled:
            log.warning("worker %s is dead: settled %d of its running tasks", worker, settled)
        return settled

    def _settle(self, worker: str, entries: list[Running], ttl: float) -> int:
        messages = unacked_messages(self.client, {e.task_id for e in entries})
        rerun_of = self._reruns(entries)
        settled = 0
        for e in sorted(entries, key=lambda e: e.at):
            start = self.client.hget(starts_key(e.run_id), e.task_id)
            if start is None or json.loads(start).get("worker") != worker:
                self.client.hdel(running_key(worker), e.task_id)
                continue  # parked, or started again elsewhere: not ours to settle
            release_leases(self.client, e.task_id)
            tag, message = messages.get(e.task_id, ("", None))
            again = e.idempotent and e.task_id not in rerun_of and message is not None
            settled += self._commit(worker, ttl, e, tag, message if again else None)
        return settled

    def _reruns(self, entries: Iterable[Running]) -> set[str]:
        """Of ``entries``, the tasks that already are a rerun (never run a third time)."""
        entries = list(entries)
        pipe = self.client.pipeline(transaction=False)
        for e in entries:
            pipe.hexists(reruns_key(e.run_id), e.task_id)
        return {e.task_id for e, hit in zip(entries, pipe.execute(), strict=True) if hit}

    def _commit(self, worker: str, ttl: float, e: Running, tag: str,
                message: dict[str, Any] | None) -> int:
        retention = max(1, int(self.settings.run_retention))
        new_id = str(uuid.uuid4()) if message is not None else ""
        silent = dead_after(ttl)
        text = (f"worker {worker} stopped its heartbeat while running {e.task} "
                f"(silent for over {silent:g} s)")
        if new_id:
            text += f"; it runs again as task {new_id}"
        now = datetime.now(timezone.utc)
        meta: dict[str, Any] = {
            "status": "FAILURE", "task_id": e.task_id, "name": e.task, "worker": worker,
            "result": {"exc_type": "WorkerLostError", "exc_module": "billiard.exceptions",
                       "exc_message": [text]},
            "traceback": None, "children": [], "date_done": now.isoformat(),
            # Settled here: a late store from the returning host must not replace it.
            "labq_reaped": True,
        }
        if new_id:
            meta["labq_rerun"] = new_id
        value = json.dumps(meta)
        payload = entry = ""
        if message is not None:
            payload = json.dumps(renamed(message, new_id))
            # labq.client.run_info.task_entries' format: a rerun names its first.
            entry = json.dumps([new_id, e.task, "", e.queue, now.isoformat(), e.task_id])
        here = self.backend is None
        status = RERUN_STATUS if new_id else Status.LOST.value
        keys = [running_key(worker), fenced_key(e.run_id), starts_key(e.run_id),
                parked_key(e.task_id), reruns_key(e.run_id), tasks_key(e.run_id),
                f"{RESULT_PREFIX}{e.task_id}", done_key(e.run_id), states_key(e.run_id),
                e.queue or "labq", UNACKED_KEY, UNACKED_INDEX_KEY,
                log_key(e.run_id), info_key(e.run_id)]
        args: list[str | int] = [e.task_id, worker, retention, value, status, new_id, payload,
                                 entry, tag, DONE_STREAM_MAXLEN, "1" if here else "0"]
        if not int(self._script(keys=keys, args=args)):
            return 0
        if self.backend is not None:
            self.backend.store_settled(e.task_id, e.run_id, value, status, retention)
        if new_id:
            log.warning("task %s (%s) of run %s runs again as %s: its worker %s died",
                        e.task_id, e.task, e.run_id, new_id, worker)
        return 1


def unacked_messages(client: redis.Redis,
                     task_ids: set[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Task id -> (delivery tag, message) of ``task_ids``' messages that
    kombu holds as taken and not acknowledged."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for tag, raw in client.hscan_iter(UNACKED_KEY, count=500):
        try:
            message = json.loads(raw)[0]
            task_id = message["headers"]["id"]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if task_id in task_ids:
            out[task_id] = (text(tag), message)
    return out


def renamed(message: dict[str, Any], new_id: str) -> dict[str, Any]:
    """``message`` (kombu's Redis payload) as a new task ``new_id``: the same
    call, body and queue, a fresh delivery tag."""
    headers = {**message["headers"], "id": new_id}
    properties = {**message["properties"], "correlation_id": new_id,
                  "delivery_tag": str(uuid.uuid4())}
    return {**message, "headers": headers, "properties": properties}


def release_leases(client: redis.Redis, task_id: str) -> None:
    """Free a dead task's leases now; on failure they expire with their TTL."""
    try:
        Leases(client).release_all(task_id)
    except redis.RedisError as exc:
        log.debug("leases of lost task %s left to expire: %s", task_id, exc)
