"""The base class of every task on a labq app, run inside the prefork child.

It adds what a run needs around the task body:

- the run id and testscript name travel as the reserved keyword arguments
  ``labq_run`` and ``labq_script`` (so Flower can filter on them with
  ``kwargs:labq_run=<id>``); they are taken off before the body runs;
- a cancelled run is checked in Redis before the body starts, so a
  cancel survives worker restarts (Celery's revoke lives in worker memory);
- the start time, worker and prefork slot are recorded for the outcome and
  the report's timeline;
- log records the body emits are streamed to the testscript.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, Protocol

import redis
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from labq.errors import SoftTimeout, TaskCancelled
from labq.fairshare.backlogs import Backlogs
from labq.keys import (
    DONE_STREAM_MAXLEN,
    HOLD_KWARG,
    LOG_STREAM_MAXLEN,
    OWNER_KWARG,
    RESERVED_KWARGS,
    RUN_KWARG,
    cancel_key,
    done_key,
    fenced_key,
    log_key,
    running_key,
    starts_key,
)
from labq.redis_client import connect
from labq.settings import Settings
from labq.worker.interrupt import armed, delivered
from labq.worker.reaper import Running

log = logging.getLogger(__name__)

_redis: tuple[int, str, redis.Redis] | None = None


def worker_redis(url: str, settings: Settings) -> redis.Redis:
    """One Redis client per process and URL, made again after a fork."""
    global _redis
    if _redis is None or _redis[0] != os.getpid() or _redis[1] != url:
        _redis = (os.getpid(), url, connect(url, settings, socket_timeout=10))
    return _redis[2]


def slot_name(hostname: str | None) -> str:
    """``worker@host/N``: the prefork child's index, for the timeline lanes."""
    try:
        from billiard.process import current_process

        index = current_process().index
    except Exception:
        index = 0
    return f"{hostname or socket.gethostname()}/{index}"


class _RunContext:
    """What the log handler needs to know about the task that runs now."""

    run_id: str | None = None
    device: str | None = None
    task_id: str | None = None
    client: redis.Redis | None = None


current = _RunContext()


class RunLogHandler(logging.Handler):
    """Sends a running task's log records to its run's Redis stream."""

    def emit(self, record: logging.LogRecord) -> None:
        if current.run_id is None or current.client is None or record.name.startswith(
            ("celery", "kombu", "redis", "labq.worker.task_base", "paramiko", "asyncssh")
        ):
            return
        try:
            current.client.xadd(
                log_key(current.run_id),
                {"device": current.device or "", "task_id": current.task_id or "",
                 "level": record.levelname, "logger": record.name,
                 "message": self.format(record), "at": str(record.created)},
                maxlen=LOG_STREAM_MAXLEN, approximate=True,
            )
        except SoftTimeLimitExceeded:
            raise  # an interrupt that lands in the XADD is the task's, not a log failure
        except Exception:
            pass


_handler_pid: int | None = None


def _install_log_handler() -> None:
    global _handler_pid
    if _handler_pid == os.getpid():
        return
    _handler_pid = os.getpid()
    handler = RunLogHandler(level=logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


_backlogs: tuple[int, Backlogs] | None = None


def _give_slot_back(client: redis.Redis, settings: Settings, worker: str, queue: str) -> None:
    """The task's slot is free: count it so, and dispatch the next fair-share task into it."""
    global _backlogs
    if _backlogs is None or _backlogs[0] != id(client):
        _backlogs = (id(client), Backlogs(client, settings))
    try:
        _backlogs[1].ended(worker, queue)
    except redis.RedisError as exc:  # the worker's sweep dispatches within a second
        log.debug("slot of %s not given back: %s", worker, exc)


class StartRider(Protocol):
    """One command a task sends in its start record's round trip (see
    ``LabqTask._start_rider``): ``queue`` puts it on the pipeline,
    ``answered`` gets its reply (an exception if it failed), and ``undo``
    takes it back when the task is not going to run after all."""

    def queue(self, pipe: Any) -> None: ...

    def answered(self, reply: Any) -> None: ...

    def undo(self) -> None: ...


class LabqTask(Task):  # type: ignore[misc]
    """Base of every task on a labq app (``task_cls``)."""

    #: Hard kills take the child's whole process tree (labq.worker.killing).
    Request = "labq.worker.killing:KillingRequest"

    #: May run again after its worker host died mid-task.
    idempotent: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run_id = kwargs.pop(RUN_KWARG, None)
        # What a failure's hold needs (labq.worker.holds), kept off the function's kwargs.
        self.request.labq_hold = kwargs.get(HOLD_KWARG)
        self.request.labq_owner = kwargs.get(OWNER_KWARG)
        self.request.labq_run_id = run_id
        for reserved in RESERVED_KWARGS:
            kwargs.pop(reserved, None)
        if getattr(self.request, "called_directly", True):
            return self.run(*args, **kwargs)
        if run_id is None:
            with armed():
                return self.run(*args, **kwargs)
        settings = self.app.labq_settings
        client = worker_redis(settings.broker_url, settings)
        task_id = self.request.id
        try:
            # Armed from the start record on: a cancel's interrupt can arrive
            # as soon as the start is in Redis, before the task's own code.
            with armed():
                self._record_start(client, run_id, task_id, self._start_rider(args, kwargs))
                _install_log_handler()
                current.run_id, current.task_id, current.client = run_id, task_id, client
                current.device = str(kwargs.get("device") or (args[0] if args else "") or "")
                return self.run(*args, **kwargs)
        except Exception as exc:
            interrupt = isinstance(exc, (SoftTimeLimitExceeded, SoftTimeout))
            if not interrupt and not delivered():
                raise
            # A cancel interrupts with the same signal as the soft limit.
            if client.exists(cancel_key(run_id)):
                raise TaskCancelled(f"run {run_id!r} was cancelled while task {task_id} ran") from exc
            if interrupt:
                raise
            # Code the interrupt went through turned it into an error of its own.
            raise SoftTimeLimitExceeded(
                f"soft time limit reached; the interrupt surfaced as {type(exc).__name__}: "
                f"{exc}") from exc
        finally:
            current.run_id = current.task_id = current.device = None
            queue = getattr(self.request, "labq_busy", None)
            if queue is not None:
                self.request.labq_busy = None
                _give_slot_back(client, settings, self.request.hostname or "", queue)

    def note_devices(self, devices: dict[str, str]) -> None:
        """Add the devices the task was given (role -> device) to its start
        record, for the run's outcome; a no-op outside a run."""
        start = getattr(self.request, "labq_start", None)
        if start is None:
            return
        run_id, record = start
        record = {**record, "devices": dict(devices)}
        self.request.labq_start = (run_id, record)
        settings = self.app.labq_settings
        worker_redis(settings.broker_url, settings).hset(
            starts_key(run_id), self.request.id, json.dumps(record))

    def _start_rider(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> StartRider | None:
        """A command to send with the start record; none here (DeviceTask takes its lease)."""
        return None

    def _record_start(self, client: redis.Redis, run_id: str, task_id: str,
                      rider: StartRider | None = None) -> None:
        """Store STARTED and the start record; refuse a fenced, finished or cancelled task.

        ``rider``'s command goes last in the same round trip, and is undone
        if the task is refused or the round trip fails.
        """
        try:
            self._record_start_with(client, run_id, task_id, rider)
        except BaseException:
            if rider is not None:
                rider.undo()
            raise

    def _record_start_with(self, client: redis.Redis, run_id: str, task_id: str,
                           rider: StartRider | None) -> None:
        settings = self.app.labq_settings
        # Record the start, then check the cancel flag: a cancel sets the flag,
        # then reads the starts, so every task is either seen running (and
        # interrupted) or sees the flag here. A pipeline keeps that order on
        # one connection; no MULTI/EXEC is needed for it.
        pipe = client.pipeline(transaction=False)
        # labq's backend left the STARTED state to this round trip (labq.worker.backend).
        take = getattr(self.backend, "take_started", None)
        started = take(task_id) if take is not None else None
        shared = started is not None and settings.backend_url == settings.broker_url
        # The store's reply: 0 when the task's SUCCESS was stored before.
        stored = None if started is None or shared else self.backend.store(started)
        if shared:
            self.backend.store(started, pipe)
        record = {"at": time.time(), "worker": self.request.hostname or "",
                  "slot": slot_name(self.request.hostname), "pid": os.getpid()}
        self.request.labq_start = (run_id, record)
        pipe.hset(starts_key(run_id), task_id, json.dumps(record))
        pipe.expire(starts_key(run_id), int(settings.run_retention))
        queue = (self.request.delivery_info or {}).get("routing_key")
        # Whose task this is, should this worker die (labq.worker.reaper).
        pipe.hset(running_key(self.request.hostname or ""), task_id,
                  Running.entry(run_id, self.name, queue or "", bool(self.idempotent)))
        pipe.exists(cancel_key(run_id))
        pipe.hexists(fenced_key(run_id), task_id)
        if settings.fair_share and queue:
            # Counted busy from now: fair share dispatches no message for this slot.
            Backlogs.started(pipe, self.request.hostname or "")
            self.request.labq_busy = queue
        if rider is not None:
            rider.queue(pipe)
        replies = pipe.execute(raise_on_error=False)
        if rider is not None:
            rider.answered(replies.pop())
        if shared and isinstance(replies[0], redis.exceptions.NoScriptError):
            replies[0] = self.backend.store(started)  # Redis restarted: load it again
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if shared:
            stored = replies[0]
        if settings.fair_share and queue:
            replies.pop()
        cancelled, fenced = replies[-2:]
        if fenced:
            # Its run declared it lost (or ran it again) when its first worker
            # died; a redelivered message must not run it a second time.
            log.warning("task %s of run %s was declared lost earlier; not running it",
                        task_id, run_id)
            raise Ignore()
        if stored == 0:
            # It succeeded, but its ack was lost with the connection to Redis:
            # the message came back; the task must not run a second time.
            log.warning("task %s of run %s already succeeded; not running it again",
                        task_id, run_id)
            raise Ignore()
        if cancelled:
            raise TaskCancelled(f"run {run_id!r} was cancelled before task {task_id} started")

    def after_return(self, status: str, retval: Any, task_id: str, args: Any,
                     kwargs: Any, einfo: Any) -> None:
        # labq's result backend announces the end with the stored result
        # (labq.worker.backend); another backend needs the announcement from here.
        run_id = (kwargs or {}).get(RUN_KWARG)
        if (run_id is None or getattr(self.request, "called_directly", True)
                or getattr(self.backend, "announces_done", False)):
            return
        try:
            settings = self.app.labq_settings
            pipe = worker_redis(settings.broker_url, settings).pipeline(transaction=False)
            pipe.xadd(done_key(run_id), {"task_id": task_id, "status": status},
                      maxlen=DONE_STREAM_MAXLEN, approximate=True)
            pipe.expire(done_key(run_id), int(settings.run_retention))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("cannot announce the end of task %s to run %s: %s", task_id, run_id, exc)
