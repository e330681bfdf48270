"""What ``labq status`` shows: the lab at a glance, read from Redis alone.

Nothing is broadcast to the workers, so a status works while they are busy
or gone. Every read is bounded:

- workers: the heartbeats ``labq:worker:*`` (labq.worker.liveness);
- queues: kombu's binding tables ``_kombu.binding.*`` name the queues; a
  queue's depth is the LLEN of its key plus its priority keys
  (``queue\\x06\\x16<step>``, kombu's redis transport);
- running tasks: kombu's ``unacked`` hash holds every message a worker has
  taken and not yet acknowledged (labq acks late, so running ones too): at
  most the prefetch of every worker. The run's start record
  (``labq:run:{run}:started``) tells running from reserved, the result
  backend drops those that just finished;
- device leases and waiters: :meth:`labq.devices.lease.Leases.snapshot`;
- work waiting for its fair share, by queue and run
  (:mod:`labq.ops.waiting_work`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, TypeVar

import redis
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from labq.devices.lease import DeviceLeases, Leases
from labq.devices.pick import decode
from labq.errors import BrokerUnavailable
from labq.keys import (
    BINDING_PREFIX,
    OWNER_KWARG,
    PRIORITY_KWARG,
    RESULT_PREFIX,
    RUN_KWARG,
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    fenced_key,
    starts_key,
)
from labq.ops.reservation_list import from_leases, holder_text, reservations_table
from labq.ops.waiting_work import RunWaiting, waiting_table, waiting_work
from labq.redis_client import unavailable
from labq.settings import Settings, mask_url
from labq.worker.liveness import WorkerBeat, read_workers

#: kombu's redis transport: message keys per priority step, and the separator.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
#: Exchanges of Celery's own plumbing (remote control, events), not task queues.
INTERNAL_EXCHANGES = frozenset({"celery.pidbox", "reply.celery.pidbox", "celeryev"})
#: Result states after which a task no longer runs (celery.states.READY_STATES).
FINISHED_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: Rows per table on the screen; ``--json`` has them all.
SCREEN_ROWS = 20


class TaskState(str, Enum):
    """Where an unacknowledged task is."""

    #: Started on a worker whose heartbeat is current.
    RUNNING = "running"
    #: Taken by a worker, not started yet (prefetched, or waiting for an ETA).
    RESERVED = "reserved"
    #: Started on a worker whose heartbeat has expired: the run settles it as
    #: lost (or runs it again); Redis still holds the message until then.
    ORPHANED = "orphaned"
    #: Its run already declared it lost; the message waits for its visibility timeout.
    LOST = "lost"


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    #: Messages waiting, all priorities.
    depth: int
    #: Workers whose heartbeat says they consume the queue.
    consumers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    task: str
    device: str
    run: str
    state: TaskState
    worker: str
    #: The prefork child, ``worker@host/N``, once started.
    slot: str
    #: Epoch seconds: started, else taken by the worker.
    since: float
    #: The run's owner and priority, from the task's reserved kwargs.
    owner: str = ""
    priority: str = ""


@dataclass(frozen=True)
class LabStatus:
    """One reading of the lab; :meth:`to_json` is ``labq status --json``."""

    broker: str
    at: float
    workers: list[WorkerBeat] = field(default_factory=list)
    queues: list[QueueDepth] = field(default_factory=list)
    tasks: list[TaskRow] = field(default_factory=list)
    leases: list[DeviceLeases] = field(default_factory=list)
    waiting: list[RunWaiting] = field(default_factory=list)
    #: Sections left out, and why (a Redis ACL user that may not read them).
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        at = self.at
        return {
            "broker": self.broker,
            "at": at,
            "workers": [{**asdict(w), "queues": list(w.queues),
                         "heartbeat_age": round(at - w.beat_at, 3)} for w in self.workers],
            "queues": [{**asdict(q), "consumers": list(q.consumers)} for q in self.queues],
            "tasks": [{**asdict(t), "state": t.state.value, "age": round(at - t.since, 3)}
                      for t in self.tasks],
            "leases": [asdict(d) for d in self.leases],
            "reservations": from_leases(self.leases),
            "waiting": [asdict(w) for w in self.waiting],
            "notes": list(self.notes),
        }


@contextmanager
def _redis(url: str) -> Iterator[redis.Redis]:
    """A client whose Redis errors become :class:`BrokerUnavailable` naming ``url`` masked."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    except redis.RedisError as exc:
        raise BrokerUnavailable(unavailable(url, exc)) from exc
    finally:
        client.close()


T = TypeVar("T")


def _readable(section: str, notes: list[str], read: Callable[[], list[T]]) -> list[T]:
    """``read()``, or nothing and a note when the Redis user may not read it."""
    try:
        return read()
    except redis.exceptions.NoPermissionError as exc:
        notes.append(f"{section} not shown: this Redis user may not read them ({exc})")
        return []


def collect(settings: Settings) -> LabStatus:
    """Read workers, queues, unacknowledged tasks and leases from Redis.

    A section the Redis user's ACL forbids is left out with a note; any
    other Redis error raises :class:`BrokerUnavailable` naming the masked URL.
    """
    notes: list[str] = []
    with _redis(settings.broker_url) as client:
        workers = sorted(_readable("workers", notes, lambda: read_workers(client)),
                         key=lambda w: (w.host, w.hostname))
        queues = _readable("queues", notes, lambda: queue_depths(
            client, _queue_names(client, workers, settings.default_queue), workers))
        tasks = _readable("tasks", notes, lambda: _unacked_tasks(client))
        leases = _readable("device leases", notes, lambda: Leases(client).snapshot())
        waiting = _readable("waiting work", notes, lambda: waiting_work(client))
    if tasks:
        tasks = _readable("tasks", notes, lambda: _settle(
            tasks, client_url=settings.backend_url, workers=workers))
    return LabStatus(broker=mask_url(settings.broker_url), at=time.time(), workers=workers,
                     queues=queues, tasks=tasks, leases=leases, waiting=waiting, notes=notes)


def _queue_names(client: redis.Redis, workers: Iterable[WorkerBeat],
                 default_queue: str) -> list[str]:
    """Queues some producer or worker declared, the ones workers consume, the default."""
    names = {default_queue, *(q for w in workers for q in w.queues)}
    tables = [k.decode() for k in client.scan_iter(match=f"{BINDING_PREFIX}*", count=500)]
    tables = [t for t in tables if t[len(BINDING_PREFIX):] not in INTERNAL_EXCHANGES]
    if tables:
        pipe = client.pipeline(transaction=False)
        for table in tables:
            pipe.smembers(table)
        for members in pipe.execute():
            # Each member is routing_key, pattern and queue, joined by the separator.
            names.update(m.decode().split(PRIORITY_SEP)[-1] for m in members)
    return sorted(n for n in names if n)


def priority_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps ``queue``'s messages in, one per priority step."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_depths(client: redis.Redis, names: list[str],
                 workers: Iterable[WorkerBeat]) -> list[QueueDepth]:
    workers = list(workers)
    pipe = client.pipeline(transaction=False)
    for name in names:
        for key in priority_keys(name):
            pipe.llen(key)
    lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return [
        QueueDepth(name, sum(lengths[i * steps:(i + 1) * steps]),
                   tuple(w.hostname for w in workers if name in w.queues))
        for i, name in enumerate(names)
    ]


@dataclass(frozen=True)
class _Unacked:
    task_id: str
    task: str
    device: str
    run: str
    delivered_at: float
    owner: str = ""
    priority: str = ""


def _unacked_tasks(client: redis.Redis) -> list[TaskRow]:
    """Every message a worker holds unacknowledged, with what it started."""
    raw = client.hgetall(UNACKED_KEY)
    if not raw:
        return []
    delivered: dict[Any, float] = dict(client.zrange(UNACKED_INDEX_KEY, 0, -1,
                                                     withscores=True))  # type: ignore[arg-type]
    found = [m for tag, payload in raw.items()
             if (m := _parse(payload, delivered.get(tag, time.time()))) is not None]
    runs = sorted({m.run for m in found if m.run})
    pipe = client.pipeline(transaction=False)
    for run in runs:
        ids = [m.task_id for m in found if m.run == run]
        pipe.hmget(starts_key(run), ids)
        pipe.hmget(fenced_key(run), ids)
    replies = iter(pipe.execute()) if runs else iter(())
    started: dict[str, dict[str, Any]] = {}
    fenced: set[str] = set()
    for run in runs:
        ids = [m.task_id for m in found if m.run == run]
        for task_id, start in zip(ids, next(replies), strict=True):
            if start:
                started[task_id] = json.loads(start)
        fenced.update(t for t, f in zip(ids, next(replies), strict=True) if f)
    rows = []
    for m in found:
        start = started.get(m.task_id, {})
        state = (TaskState.LOST if m.task_id in fenced
                 else TaskState.RUNNING if start else TaskState.RESERVED)
        rows.append(TaskRow(
            task_id=m.task_id, task=m.task, device=m.device, run=m.run, state=state,
            worker=str(start.get("worker", "")), slot=str(start.get("slot", "")),
            since=float(start.get("at", m.delivered_at)), owner=m.owner, priority=m.priority,
        ))
    return rows


def _parse(payload: bytes | str, delivered_at: float) -> _Unacked | None:
    """The task of an unacked entry, ``[message, exchange, routing_key]`` in JSON."""
    try:
        message = json.loads(payload)[0]
        headers = message.get("headers") or {}
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        kwargs = json.loads(body)[1]
    except (ValueError, KeyError, IndexError, TypeError):
        return None  # not a labq task message (protocol 1, pickle): skipped
    if not isinstance(kwargs, dict):
        kwargs = {}
    device = decode(kwargs.get("device") or "")  # a Pick shows as Pick(role='spine')
    return _Unacked(task_id=str(headers.get("id", "")), task=str(headers.get("task", "")),
                    device=str(device), run=str(kwargs.get(RUN_KWARG) or ""),
                    delivered_at=delivered_at, owner=str(kwargs.get(OWNER_KWARG) or ""),
                    priority=str(kwargs.get(PRIORITY_KWARG) or ""))


def _settle(tasks: list[TaskRow], *, client_url: str,
            workers: Iterable[WorkerBeat]) -> list[TaskRow]:
    """Drop tasks the result backend shows finished; flag those of dead workers."""
    alive = {w.hostname for w in workers}
    with _redis(client_url) as client:
        metas = client.mget([RESULT_PREFIX + t.task_id for t in tasks])
    out = []
    for task, raw in zip(tasks, metas, strict=True):
        meta = json.loads(raw) if raw else {}
        if meta.get("status") in FINISHED_STATES:
            continue  # finished; the worker acks it next
        worker = task.worker or str(meta.get("worker") or "")
        state = task.state
        if meta.get("status") == "STARTED" and state is TaskState.RESERVED:
            state = TaskState.RUNNING  # a task submitted outside a labq run
        if state is TaskState.RUNNING and worker and worker not in alive:
            state = TaskState.ORPHANED
        out.append(TaskRow(task.task_id, task.task, task.device, task.run, state,
                           worker, task.slot, task.since, task.owner, task.priority))
    return sorted(out, key=lambda t: (t.state is not TaskState.RUNNING, t.since))


# -- the screen -----------------------------------------------------------


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _short(task: str) -> str:
    return task.rsplit(".", 1)[-1]


def _more(table: Table, total: int) -> Table:
    if total > SCREEN_ROWS:
        table.caption = f"{total - SCREEN_ROWS} more; labq status --json lists all"
    return table


def render(status: LabStatus) -> Group:
    """The four tables, for a terminal."""
    at = status.at
    workers = Table(title=f"workers ({status.broker})", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("host", "worker", "queues", "pool", "busy", "heartbeat", "up"):
        workers.add_column(col, justify="right" if col in ("pool", "busy") else "left")
    for w in status.workers[:SCREEN_ROWS]:
        busy = Text(str(w.busy), style="bold yellow" if w.busy >= w.concurrency else "")
        workers.add_row(w.host, w.hostname, ",".join(w.queues), str(w.concurrency), busy,
                        f"{_age(at - w.beat_at)} ago", _age(at - w.started_at))
    if not status.workers:
        workers.add_row(Text("no worker has a current heartbeat", style="bold red"))

    queues = Table(title="queues", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("queue", "waiting", "consumed by"):
        queues.add_column(col, justify="right" if col == "waiting" else "left")
    for q in status.queues[:SCREEN_ROWS]:
        consumers = (Text(", ".join(q.consumers)) if q.consumers
                     else Text("nobody", style="bold red" if q.depth else "dim"))
        queues.add_row(q.queue, str(q.depth), consumers)

    tasks = Table(title="tasks taken by workers", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("id", "task @ device", "run (owner, priority)", "state", "slot", "age"):
        # A narrow terminal folds the run id; every other cell stays whole.
        tasks.add_column(col, no_wrap=not col.startswith("run"), overflow="fold")
    styles = {TaskState.RUNNING: "green", TaskState.RESERVED: "dim",
              TaskState.ORPHANED: "bold red", TaskState.LOST: "red"}
    for t in status.tasks[:SCREEN_ROWS]:
        tasks.add_row(t.task_id[:8], f"{_short(t.task)} @ {t.device}" if t.device else _short(t.task),
                      f"{t.run} ({t.owner or '?'}, {t.priority or '?'})" if t.run else "-",
                      Text(t.state.value, style=styles[t.state]), t.slot or t.worker or "-",
                      _age(at - t.since))

    leases = Table(title="device leases", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("device", "held by (task @ worker, held for, expires in)", "waiters"):
        leases.add_column(col)
    for d in status.leases[:SCREEN_ROWS]:
        holders = "\n".join(
            f"{holder_text(h)}, {_age(at - h.since)}, "
            f"{_age(h.expires_at - at)}" for h in d.holders) or "-"
        waiters = ", ".join(f"{w.position}:{w.holder[:8]} ({_age(at - w.since)})"
                            for w in d.waiters) or "-"
        leases.add_row(d.device, holders, waiters)
    notes = [Text(n, style="yellow") for n in status.notes]
    return Group(_more(workers, len(status.workers)), _more(queues, len(status.queues)),
                 waiting_table(status.waiting, SCREEN_ROWS),
                 _more(tasks, len(status.tasks)), _more(leases, len(status.leases)),
                 reservations_table(from_leases(status.leases)), *notes)


def print_status(status: LabStatus, console: Console | None = None) -> None:
    (console or Console()).print(render(status))
