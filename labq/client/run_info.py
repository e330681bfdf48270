"""The run registry: what a run is, kept in Redis so another shell can find
it by id prefix, list it, attach to it and report on it.

Each :class:`labq.Run` writes ``labq:run:<id>:info`` when it starts (name,
testscript, host, pid, owner, priority, start time, state ``open``), adds
each queue its tasks go to, and its end (state ``done`` or ``cancelled``,
end time) when it closes. Its task ids, in submit order, go onto
``labq:run:<id>:tasks`` with their publish (:func:`task_entries`), and each
task's final status into ``labq:run:<id>:states`` with its stored result
(:mod:`labq.worker.backend`). ``labq cancel RUN_ID_OR_PREFIX`` finds the
run here and cancels it (:func:`labq.client.cancel.cancel_by_id`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import redis

from labq.errors import BrokerUnavailable, SubmitError, UnknownRun
from labq.keys import info_key, info_pattern, run_of_info_key, tasks_key
from labq.redis_client import text

if TYPE_CHECKING:
    from labq.client.messages import TaskMessage


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
    #: ``open`` while its testscript runs it (or died), ``done`` or ``cancelled``.
    state: str = "open"
    ended_at: float | None = None


def record_start(client: redis.Redis, run_id: str, name: str, script: str, *,
                 retention: float, owner: str = "", priority: str = "normal") -> None:
    """Write the run's info record (one round trip)."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(info_key(run_id), mapping={
        "name": name, "script": script, "host": socket.gethostname(), "pid": os.getpid(),
        "started_at": time.time(), "queues": "", "owner": owner, "priority": priority,
        "state": "open",
    })
    pipe.expire(info_key(run_id), int(retention))
    pipe.execute()


def record_end(client: redis.Redis, run_id: str, state: str, retention: float) -> None:
    """The run ended: ``done`` or ``cancelled``, now; it is kept ``retention`` from now."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(info_key(run_id), mapping={"state": state, "ended_at": time.time()})
    for key in (info_key(run_id), tasks_key(run_id)):
        pipe.expire(key, int(retention))
    pipe.execute()


def task_entries(messages: Iterable[TaskMessage], queued_at: datetime,
                 replaces: str = "") -> list[str]:
    """The registry's entries of ``messages``: JSON [task id, task, device,
    queue, queued at, the task id it runs again in place of ('' for none)]."""
    at = queued_at.isoformat()
    return [json.dumps([m.task_id, m.name, m.device or "", m.queue, at, replaces])
            for m in messages]


@dataclass(frozen=True)
class TaskEntry:
    """One task of a run, as its registry has it."""

    task_id: str
    task: str
    device: str
    queue: str
    queued_at: datetime
    replaces: str = ""


def read_tasks(client: redis.Redis, run_id: str) -> list[TaskEntry]:
    """The run's tasks in submit order (a rerun after its first, with ``replaces``)."""
    out = []
    for raw in client.lrange(tasks_key(run_id), 0, -1):
        task_id, task, device, queue, at, replaces = json.loads(raw)
        out.append(TaskEntry(str(task_id), str(task), str(device), str(queue),
                             datetime.fromisoformat(at), str(replaces)))
    return out


def record_queues(client: redis.Redis, run_id: str, queues: set[str]) -> None:
    """Keep the queues the run has sent tasks to (a cancel purges them)."""
    client.hset(info_key(run_id), "queues", ",".join(sorted(queues)))


def one_run(client: redis.Redis, prefix: str, retention: float | None = None) -> RunInfo:
    """The one run whose id starts with ``prefix``; :class:`UnknownRun` if none or several."""
    runs = find(client, prefix)
    if not runs:
        kept = "" if retention is None else f" (runs are kept {_span(retention)})"
        raise UnknownRun(f"no run's id starts with {prefix!r}{kept}")
    if len(runs) > 1:
        names = ", ".join(r.id for r in runs[:5]) + (" ..." if len(runs) > 5 else "")
        raise UnknownRun(f"{len(runs)} runs' ids start with {prefix!r}: {names}; "
                         "give more of the id")
    return runs[0]


def find(client: redis.Redis, prefix: str) -> list[RunInfo]:
    """Every run whose id starts with ``prefix``, newest first."""
    if not prefix:
        raise SubmitError("a run id or the start of one is needed, got ''")
    return all_runs(client, prefix)


def all_runs(client: redis.Redis, prefix: str = "") -> list[RunInfo]:
    """Every run in the registry (whose id starts with ``prefix``), newest first."""
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
                            priority=fields.get("priority", "normal"),
                            state=fields.get("state", "open"),
                            ended_at=float(fields["ended_at"]) if fields.get("ended_at")
                            else None))
    return sorted(runs, key=lambda r: r.started_at, reverse=True)


def _span(seconds: float) -> str:
    """``7 days``, ``12 h``, ``90 s``: a retention as people say it."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"
