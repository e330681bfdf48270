"""Runs: submit device tasks now, gather their outcomes later.

A :class:`Run` tags every task with its id and the testscript's name,
gathers outcomes from the raw result records in Redis, streams the tasks'
log lines, shows progress, follows the reruns of a dead worker's idempotent
tasks (the workers settle those: labq.worker.reaper) and cancels durably
(labq.client.cancel). What it knows of its tasks is one
:class:`~labq.client.run_state.RunState`, which the cancel takes as an
argument.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import redis

from labq.app import LabqCelery, create_app
from labq.client.cancel import cancel_run, fence_stopped
from labq.client.explain import explain
from labq.client.held import announce_holds
from labq.client.interrupts import sigterm_interrupts, stop_run
from labq.client.progress import Progress
from labq.client.publish import DEFAULT_CHUNK
from labq.client.run_info import (
    one_run,
    read_tasks,
    record_end,
    record_start,
)
from labq.client.run_state import Call, RunState
from labq.client.streams import RunStreams
from labq.client.submission import (
    check_limits,
    check_owner,
    script_name,
)
from labq.client.submitter import Submitter
from labq.devices.reservations import Reservation
from labq.errors import (
    BrokerUnavailable,
    LabqError,
    RunInterrupted,
    RunTimeout,
)
from labq.fairshare.priority import Priority
from labq.keys import (
    HOLD_KWARG,
    OWNER_KWARG,
    PRIORITY_KWARG,
    RUN_KWARG,
    SCRIPT_KWARG,
    cancel_key,
    starts_key,
)
from labq.outcome import Outcome, outcome_from_meta
from labq.redis_client import auth_failed, connect, retrying, unavailable
from labq.settings import Settings, mask_url, parse_duration

log = logging.getLogger(__name__)

#: Longest wait for a pushed change (a task's end, a log line) before every
#: pending result is read anyway: for ends that push nothing (a done stream
#: trimmed behind the client, a result backend other than labq's).
CHANGE_WAIT = 0.5


class Run:
    """A named group of tasks, gathered and cancelled together."""

    def __init__(self, name: str = "run", *, soft_time_limit: float | None = None,
                 time_limit: float | None = None, app: LabqCelery | None = None,
                 settings: Settings | None = None, progress: bool | None = None,
                 logs: bool = True, grace: float | None = None,
                 report: str | os.PathLike[str] | None = None,
                 priority: str | Priority = Priority.NORMAL, owner: str | None = None,
                 hold_on_failure: str | float | None = None, detach: bool = False) -> None:
        #: ``high`` takes free slots before ``normal``, ``normal`` before ``low``.
        self.priority = Priority.parse(priority)
        #: Who the run is for (the OS user by default): shown with its tasks everywhere.
        self.owner = check_owner(owner)
        #: Seconds a failed task's devices stay reserved for the owner (None: not at all).
        self.hold_on_failure = (None if hold_on_failure is None
                                else parse_duration(hold_on_failure, "hold_on_failure"))
        #: Reservations made for this run's failed tasks (with their tokens).
        self.held: list[Reservation] = []
        self._own_app = app is None
        self.app = app or create_app(settings or Settings.load())
        self.settings: Settings = self.app.labq_settings
        check_limits(soft_time_limit, time_limit, self.settings)
        self.name = name
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.id = f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"
        self.script = script_name()
        self.soft_time_limit = soft_time_limit
        self.time_limit = time_limit
        self._setup(progress, logs, grace, report)
        if detach:
            self.detach()
        try:
            self.redis.ping()
            record_start(self.redis, self.id, name, self.script,
                         retention=self.settings.run_retention, owner=self.owner,
                         priority=self.priority.value)
        except redis.RedisError as exc:
            hint = "" if auth_failed(exc) else "; is the stack up and LABQ_BROKER_URL right?"
            raise BrokerUnavailable(
                f"run {name!r}: {unavailable(self.settings.backend_url, exc, self.settings)}"
                f"{hint}") from exc
        print(f"labq: run {self.id} started; stop it from another shell with "
              f"'labq cancel {self.id}'", file=sys.stderr, flush=True)

    @classmethod
    def attach(cls, run_id: str, *, app: LabqCelery | None = None,
               settings: Settings | None = None, progress: bool | None = None,
               logs: bool = True, grace: float | None = None) -> Run:
        """The run ``run_id`` (or a unique start of it) as a handle, from any
        host: ``as_completed``, ``wait``, ``cancel`` and ``report`` work as on
        the original, with the same outcomes in the same order. It submits
        nothing."""
        self = cls.__new__(cls)
        self._own_app = app is None
        self.app = app or create_app(settings or Settings.load())
        self.settings = self.app.labq_settings
        client = connect(self.settings.backend_url, self.settings, socket_timeout=10,
                         socket_connect_timeout=5)
        try:
            info = one_run(client, run_id, self.settings.run_retention)
            entries = read_tasks(client, info.id)
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"attach {run_id!r}: {unavailable(self.settings.backend_url, exc, self.settings)}"
            ) from exc
        finally:
            client.close()
        self.priority = Priority.parse(info.priority or "normal")
        self.owner = info.owner
        self.hold_on_failure = None
        self.held = []
        self.name, self.id, self.script = info.name, info.id, info.script
        self.soft_time_limit = self.time_limit = None
        self._setup(progress, logs, grace, None)
        self._attached = True
        for e in entries:
            call = Call(e.task, [], {}, e.queue, None, None)
            if e.replaces and e.replaces in self._state:
                self._state.replace(e.replaces, e.task_id)
                self._state.update(replace(self._state.outcome(e.task_id), queued_at=e.queued_at))
            else:
                self._state.track(e.task_id, call, e.device or None, e.queued_at)
        self.refresh()
        return self

    def _setup(self, progress: bool | None, logs: bool, grace: float | None,
               report: str | os.PathLike[str] | None) -> None:
        """What a run and a run attached to share: state, connection, streams."""
        #: True for a handle made by :meth:`attach`.
        self._attached = False
        #: Leave the run going at the block's end (:meth:`detach`).
        self._detached = False
        #: Seconds between a cancel's soft interrupt and its hard kill.
        self.grace = self.settings.cancel_grace if grace is None else grace
        #: Where the HTML report goes when the ``with`` block ends, however it ends.
        self.report_path = Path(report) if report is not None else None
        self._progress_flag = progress
        self._state = RunState(self.id)
        #: When every pending result was last read (``as_completed``).
        self._full_at = 0.0
        #: Whether the last outcomes to end were all announced on the done
        #: stream (their log lines were read with them).
        self._pushed_last = False
        #: Workers that lack each unknown task, asked once per name (labq.client.explain).
        self._lacking: dict[str, list[str]] = {}
        self.redis = connect(self.settings.backend_url, self.settings, socket_timeout=10,
                             socket_connect_timeout=5)
        self._streams = RunStreams(self.redis, self.id, logs)
        self._submitter = Submitter(self.app, self.settings, self._state, self.redis,
                                    tags=self._tags(), priority=self.priority,
                                    limits=(self.soft_time_limit, self.time_limit))
        self._sigterm = ExitStack()

    # -- submitting -------------------------------------------------------

    def submit(self, task: Any, *args: Any, soft_time_limit: float | None = None,
               time_limit: float | None = None, **kwargs: Any) -> str:
        """Queue ``task(*args, **kwargs)``; returns its task id.

        Refused before anything is queued when the task is unknown, an
        argument is not JSON, the device is not in the testbed, or the
        limits are invalid.
        """
        return self._submitter.submit(task, args, kwargs, soft_time_limit, time_limit)

    def submit_many(self, task: Any, kwargs_list: Iterable[Mapping[str, Any]], *,
                    soft_time_limit: float | None = None, time_limit: float | None = None,
                    chunk: int = DEFAULT_CHUNK, sent_events: bool = True) -> list[str]:
        """Queue ``task(**kwargs)`` for each mapping of ``kwargs_list``, in
        Redis pipelines of ``chunk`` messages; returns the task ids in order.

        Every item is checked as :meth:`submit` checks it (task, JSON, device,
        limits) before the first message is published, so one bad item queues
        nothing. If Redis fails part way, :class:`labq.errors.PartialSubmit`
        names the task ids that were queued (the run tracks those), the
        uncertain ones and those never sent. ``sent_events=False`` skips the
        ``task-sent`` events (about a third of the client's CPU per task);
        Flower then shows each task from the moment a worker receives it.
        """
        return self._submitter.submit_many(task, kwargs_list, soft=soft_time_limit,
                                           hard=time_limit, chunk=chunk,
                                           sent_events=sent_events)

    def _tags(self) -> dict[str, Any]:
        """The reserved keyword arguments every task of this run carries."""
        tags: dict[str, Any] = {RUN_KWARG: self.id, SCRIPT_KWARG: self.script,
                                OWNER_KWARG: self.owner, PRIORITY_KWARG: self.priority.value}
        if self.hold_on_failure is not None:
            tags[HOLD_KWARG] = self.hold_on_failure
        return tags

    # -- gathering --------------------------------------------------------

    @property
    def outcomes(self) -> list[Outcome]:
        """Every outcome so far, in submit order."""
        return self._state.outcomes

    @property
    def reruns(self) -> dict[str, str]:
        """Task id that replaced each one run again after its worker died."""
        return self._state.reruns

    def _pending(self) -> list[str]:
        return self._state.pending()

    def refresh(self) -> list[Outcome]:
        """Read the state of every unfinished task; returns those that just finished."""
        pending = self._pending()
        if not pending:
            return []
        return self._read(pending)

    def _read(self, ids: list[str]) -> list[Outcome]:
        """Read the results and start records of ``ids`` (pending tasks) in one
        round trip, then settle stopped tasks and dead workers; returns the
        outcomes that just became final."""
        done = []
        metas: list[Any] = []
        starts: list[Any] = []
        cancelled = 0
        if ids:
            keys = [self.app.backend.get_key_for_task(t) for t in ids]

            def read() -> list[Any]:
                pipe = self.redis.pipeline(transaction=False)
                pipe.mget(keys)
                pipe.hmget(starts_key(self.id), ids)
                pipe.exists(cancel_key(self.id))  # a cancel from another shell
                return pipe.execute()  # type: ignore[no-any-return]

            try:
                # A Redis restart is waited out, up to LABQ_REDIS_RETRY_TIMEOUT.
                metas, starts, cancelled = retrying(read, timeout=self.settings.redis_retry_timeout)
            except redis.RedisError as exc:
                raise BrokerUnavailable(
                    f"result backend {mask_url(self.settings.backend_url)}: {exc}") from exc
        for task_id, raw, start in zip(ids, metas, starts, strict=True):
            meta = json.loads(raw) if raw else None
            if meta and meta.get("labq_rerun") and task_id in self._state:
                # Its worker died; a live worker sent it again (labq.worker.reaper).
                self._state.replace(task_id, str(meta["labq_rerun"]))
                continue
            new = outcome_from_meta(self._state.outcome(task_id), meta,
                                    json.loads(start) if start else None)
            if new.status.final and new.error is not None:
                new = explain(self.app, new, self._lacking)
            self._state.update(new)
            if new.status.final:
                done.append(new)
        if self.hold_on_failure is not None:
            self.held += announce_holds(self.redis, self.id, [
                o.task_id for o in done if o.status.final and not o.ok], self.settings.state_dir)
        fence_stopped(self._state, self.redis, done, self.settings.run_retention)
        if cancelled and not self._state.cancelled:
            # labq cancel from elsewhere: end the rest here as Run.cancel would.
            print(f"labq: run {self.id} was cancelled from another shell", file=sys.stderr,
                  flush=True)
            waiting = self._state.pending()
            self.cancel()
            done += [o for t in waiting if t in self._state
                     and (o := self._state.outcome(t)).status.final]
        return done

    def as_completed(self, timeout: float | None = None) -> Iterator[Outcome]:
        """Yield each outcome as its task ends. At ``timeout`` the rest is
        cancelled and :class:`RunTimeout` raised with every outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._pending():
            return
        with Progress(self.id, total=len(self._state), enabled=self._progress_flag) as bar:
            bar.advance([o for o in self.outcomes if o.status.final])
            while True:
                done = self._refresh_changed()
                bar.advance(done)
                yield from done
                if not self._pending():
                    break
                self._streams.wait(bar, CHANGE_WAIT, len(self._pending()))
                if deadline is not None and time.monotonic() > deadline and self._pending():
                    bar.note(f"timeout after {timeout} s: cancelling {len(self._pending())} tasks")
                    self.cancel()
                    raise RunTimeout(
                        f"run {self.id!r}: {len(self._pending()) or 'some'} tasks still "
                        f"running after {timeout} s; cancelled", self.outcomes)
            # Ends that came through the done stream were read together with
            # every log line written before them: no further read is needed.
            if not self._pushed_last or self._streams.log_backlog:
                self._streams.drain_logs(bar)

    def _refresh_changed(self) -> list[Outcome]:
        """Read the results the done stream announced; every pending result
        once each CHANGE_WAIT, for the ends that push nothing (hard kills,
        revokes, a done stream trimmed behind the client)."""
        pending = self._pending()
        if not pending:
            return []
        now = time.monotonic()
        if now - self._full_at >= CHANGE_WAIT:
            self._full_at = now
            ids = pending
        else:
            ids = [t for t in pending if t in self._streams.announced]
        done = self._read(ids)
        self._pushed_last = all(o.task_id in self._streams.announced for o in done)
        self._streams.clear_announced()
        return done

    @property
    def logs(self) -> bool:
        """Whether the tasks' log lines are shown while waiting."""
        return self._streams.logs

    @logs.setter
    def logs(self, value: bool) -> None:
        self._streams.logs = value

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Wait for every task; outcomes in submit order."""
        for _ in self.as_completed(timeout=timeout):
            pass
        return self.outcomes

    # -- cancelling -------------------------------------------------------

    def cancel(self, grace: float | None = None) -> list[Outcome]:
        """Stop the run: queued tasks never start, running ones get the soft
        interrupt and, after ``grace`` seconds, the hard kill. A Ctrl-C
        during the grace kills at once."""
        grace = self.grace if grace is None else grace
        cancel_run(self._state, self.redis, self.app.control, self.refresh, grace,
                   self.settings.run_retention, backlogs=self._submitter.backlogs)
        try:
            record_end(self.redis, self.id, "cancelled", self.settings.run_retention)
        except redis.RedisError as exc:
            log.warning("run %s: its cancel was not recorded in the registry: %s", self.id, exc)
        return self.outcomes

    def detach(self) -> None:
        """Leave the run going when the ``with`` block ends, or the script
        does: no wait, no cancel (Ctrl-C and SIGTERM still cancel). Its
        tasks run on; ``labq attach`` (the line printed then) gathers them."""
        if not self._detached:
            self._detached = True
            atexit.register(self._announce_detach)

    def _announce_detach(self) -> None:
        """Say how to find the run again, once, if it has tasks out."""
        if self._detached and self._pending() and not self._state.cancelled:
            self._detached = False  # said once
            print(f"labq: run {self.id} goes on without this testscript "
                  f"({len(self._pending())} tasks not ended): 'labq attach {self.id}' "
                  f"gathers it, 'labq report {self.id} -o report.html' reports it",
                  file=sys.stderr, flush=True)

    # -- reporting and context --------------------------------------------

    def stop(self, reason: BaseException) -> NoReturn:
        """After Ctrl-C or SIGTERM: say so, cancel, print what finished, write
        the report if one was asked for, and raise :class:`RunInterrupted`."""
        stop_run(self, reason)

    def report(self, path: str | os.PathLike[str]) -> Path:
        """Write a self-contained HTML report (timeline, summary, outputs)."""
        from labq.client.report import write_report

        self.refresh()
        return write_report(Path(path), self.id, self.outcomes)

    def close(self) -> None:
        self._announce_detach()
        if not self._attached:
            state = ("cancelled" if self._state.cancelled
                     else "done" if not self._pending() else "")
            try:
                if state:  # a run closed with tasks still out stays open
                    record_end(self.redis, self.id, state, self.settings.run_retention)
            except redis.RedisError as exc:
                log.warning("run %s: its end was not recorded: %s", self.id, exc)
        self._sigterm.close()
        self.redis.close()
        if self._own_app:
            self.app.close()

    def __enter__(self) -> Run:
        self._sigterm.enter_context(sigterm_interrupts())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
                self.stop(exc)  # Ctrl-C or SIGTERM inside the block
            if self._detached and self._pending():
                return  # close() says how to attach; a report now would be partial
            try:
                if exc is None:
                    self.wait()
                else:
                    self.cancel()
            except RunInterrupted:
                raise
            except KeyboardInterrupt as interrupt:  # ... or while waiting at its end
                self.stop(interrupt)
            if self.report_path is not None:
                try:
                    self.report(self.report_path)
                except (LabqError, OSError) as report_error:
                    if exc is None:
                        raise
                    log.error("run %s: report %s not written: %s", self.id, self.report_path,
                              report_error)  # the block's own error is the one to see
        finally:
            self.close()
