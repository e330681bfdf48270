"""``@device_task``: lease, connect, run, disconnect and release, on every exit path.

The task is called with ``device="r1"``. On the worker it then:

1. resolves the device from the worker's own testbed (credentials never
   travel in the message);
2. runs on the device's queue (the router in :mod:`labq.devices.routing` chose it);
3. takes the device lease, or gives its prefork slot back while keeping its
   place in the device's FIFO wait list: its retry is parked in Redis and
   pushed to the front of the queue when the device frees
   (:mod:`labq.worker.parking`);
4. connects with the device's driver;
5. calls the function with the session;
6. disconnects and releases, also on an error or a soft timeout.

A hard kill skips step 6 in the child; :class:`DeviceRequest` runs in the
worker's main process and releases the lease at once.

Called directly, as a plain function on a labq app made current
(``app.set_current()``, then ``execute(device="r1", command=...)``), the task
takes the same steps in the calling process, under a one-off lease holder
name, and waits for a busy device in place.

Two of the lease's round trips ride on others the task makes anyway: a first
try asks for its lease in its start record's round trip
(:class:`_LeaseAtStart`), and the release goes with the stored result
(:class:`labq.worker.backend.Rider`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from labq.devices.drivers import open_session
from labq.devices.lease import Grant, Leases, Wait
from labq.devices.renewal import Renewer
from labq.devices.selection import role_arguments
from labq.devices.testbed import Device, Testbed
from labq.devices.testbed_yaml import load_testbed
from labq.errors import ConfigError, DeviceSelectionError, SoftTimeout, TimeLimitError
from labq.keys import wait_since_key
from labq.redis_client import connect
from labq.worker import device_sets
from labq.worker.backend import LabqRedisBackend, Rider
from labq.worker.health_checks import record_check
from labq.worker.holds import NOT_FAILURES, hold_after
from labq.worker.killing import KillingRequest
from labq.worker.parking import park, wake_in
from labq.worker.task_base import LabqTask

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between lease polls of a direct call, which has no slot to give
#: back, and of a waiter whose park found a session open but not yet its own.
POLL = 0.05


@dataclass
class _WorkerContext:
    pid: int
    broker_url: str
    testbed: Testbed | None
    testbed_key: tuple[str, float]
    leases: Leases

    def device(self, name: str) -> Device:
        assert self.testbed is not None
        return self.testbed.device(name)


_context: _WorkerContext | None = None


def worker_context(app: Any) -> _WorkerContext:
    """Per-process testbed and lease client, rebuilt after a fork, for another
    broker (an app of another lab in the same process) or after a testbed edit."""
    global _context
    settings = getattr(app, "labq_settings", None)
    if settings is None:
        raise ConfigError("app", app, "device tasks run only on a labq app (labq.create_app()); "
                          "to call one as a plain function, make it current: app.set_current()")
    path = Path(settings.testbed)
    key = (str(path), path.stat().st_mtime if path.exists() else 0.0)
    if (_context is None or _context.pid != os.getpid()
            or _context.broker_url != settings.broker_url):
        client = connect(settings.broker_url, settings)
        _context = _WorkerContext(os.getpid(), settings.broker_url, None, ("", 0.0),
                                  Leases(client))
    if _context.testbed is None or _context.testbed_key != key:
        _context.testbed = load_testbed(path)
        _context.testbed_key = key
    return _context


def release_leases_of(app: Any, task_id: str) -> list[str]:
    """Release every lease ``task_id`` holds; used by the main process on a kill."""
    try:
        return worker_context(app).leases.release_all(task_id)
    except Exception:
        log.exception("could not release the leases of task %s; they expire by TTL", task_id)
        return []


class DeviceRequest(KillingRequest):
    """The worker main process's view of a device task: frees leases on a kill."""

    def on_killed(self) -> None:
        released = release_leases_of(self.task.app, self.id)
        log.warning("task %s was killed; released the leases on %s", self.id, released)


class DeviceTask(LabqTask):
    """Base class of every ``@device_task``."""

    Request = "labq.worker.device_task:DeviceRequest"
    labq_device_task = True
    #: Seconds a task may wait for its device before it fails with DeviceBusy.
    lease_timeout: float = 300.0
    connect_timeout: float = 10.0
    #: Lease waits retry without a count; ``lease_timeout`` bounds them.
    max_retries = None
    #: False for ``@device_task(session=False)``: no lease, no connection.
    takes_lease: bool = True
    #: The task's device arguments, in the order its function takes their sessions.
    labq_roles: tuple[str, ...] = ("device",)
    #: A health check (``@device_task(health_check=True)``): it may lease a
    #: device whose health blocks other tasks, and its end sets that health.
    labq_health_check: bool = False

    def _start_rider(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _LeaseAtStart | None:
        request = self.request
        # A retry or a redelivery may have waited before: _take_lease asks with its place.
        # Picks and topologies take their leases in one step of their own.
        if (not self.takes_lease or not _rides_with_result(self) or request.retries
                or self.labq_roles != ("device",)
                or not isinstance(kwargs.get("device", args[0] if args else None), str)
                or (request.delivery_info or {}).get("redelivered")):
            return None
        try:
            ctx = worker_context(self.app)
            dev = ctx.device(kwargs["device"] if "device" in kwargs else args[0])
        except Exception:
            return None  # the task's own run reports it
        rider = _LeaseAtStart(self, ctx.leases, dev.name, dev.max_sessions)
        request.labq_lease_at_start = rider
        return rider


@dataclass
class _LeaseAtStart:
    """A first try's lease request, sent with its start record.

    A grant is released with the task's stored end from the moment it is
    known, so no exit path (an interrupt before the body, a refused start)
    can leave it held until its TTL.
    """

    task: DeviceTask
    leases: Leases
    device: str
    max_sessions: int
    #: The answer; None if the request failed (then _take_lease asks again).
    answer: Grant | Wait | None = None

    def queue(self, pipe: Any) -> None:
        self.leases.queue_acquire(pipe, self.device, self.task.request.id, self.max_sessions,
                                  task=self.task.name, worker=self.task.request.hostname or "",
                                  checking=self.task.labq_health_check)

    def answered(self, reply: Any) -> None:
        if isinstance(reply, Exception):  # NOSCRIPT: this process's first acquire
            return
        self.answer = self.leases.acquire_answer(self.device, self.task.request.id, reply)
        if isinstance(self.answer, Grant):
            _release(self.task, self.leases, self.device, self.task.request.id)

    def undo(self) -> None:
        if isinstance(self.answer, Grant):
            return  # released with the task's end (see answered)
        try:  # in line, or unknown (the round trip failed): leave either way
            self.leases.release(self.device, self.task.request.id)
        except Exception:
            log.exception("could not give back the lease on %s of task %s; it expires by TTL",
                          self.device, self.task.request.id)


def device_task(
    fn: F | None = None,
    *,
    name: str | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    lease_timeout: float = 300.0,
    connect_timeout: float = 10.0,
    idempotent: bool = False,
    session: bool = True,
    roles: tuple[str, ...] | None = None,
    health_check: bool = False,
) -> Any:
    """Turn ``fn(session, **kwargs)`` into a Celery task called as ``task(device=..., **kwargs)``.

    With ``roles=("dut", "peer")`` the function takes one session per role,
    ``fn(dut, peer, **kwargs)``, and the task is called with a device name or
    a :class:`labq.Pick` for each: ``task(dut="r1", peer=labq.Pick(role="spine"))``.
    All its devices are leased together, or none. ``device=`` may be a Pick too.

    With ``session=False`` the function gets the resolved
    :class:`~labq.devices.testbed.Device` instead, and no lease or connection is taken.

    With ``health_check=True`` the task checks its one device's health: it may
    lease the device whatever its health, and its end makes the device
    ``good`` (it returned) or ``bad`` (it raised, or could not connect), unless
    a person has the device in maintenance or retired (labq.devices.health).
    """

    if soft_time_limit is not None and time_limit is not None and soft_time_limit >= time_limit:
        raise TimeLimitError(f"@device_task: soft_time_limit={soft_time_limit!r} must be below "
                             f"time_limit={time_limit!r}, or the soft limit never fires")

    role_names = _check_roles(roles, session)

    def wrap(func: F) -> Any:
        task_name = name or f"{func.__module__}.{func.__name__}"

        def run(self: DeviceTask, *args: Any, **kwargs: Any) -> Any:
            if args and role_names == ("device",) and "device" not in kwargs:
                kwargs["device"], args = args[0], args[1:]
            chosen = role_arguments(role_names, kwargs, task_name)
            for role in role_names:
                kwargs.pop(role)
            if not session:
                if not isinstance(chosen["device"], str):
                    raise DeviceSelectionError(f"{task_name} takes no lease: give it a "
                                               f"device name, not {chosen['device']}")
                return func(worker_context(self.app).device(chosen["device"]), *args, **kwargs)
            if role_names == ("device",) and isinstance(chosen["device"], str):
                return _run_on_device(self, func, chosen["device"], kwargs)
            return device_sets.run_on_devices(
                self, worker_context(self.app), func, chosen, kwargs, release=
                lambda leases, holder, failure: _end_all(self, leases, holder, failure),
                poll=POLL)

        run.__name__ = func.__name__
        run.__doc__ = func.__doc__
        run.__module__ = func.__module__
        return shared_task(
            run, bind=True, base=DeviceTask, name=task_name,
            soft_time_limit=soft_time_limit, time_limit=time_limit,
            lease_timeout=lease_timeout, connect_timeout=connect_timeout,
            idempotent=idempotent, acks_late=True,
            reject_on_worker_lost=idempotent, takes_lease=session, labq_roles=role_names,
            labq_health_check=health_check,
        )

    return wrap(fn) if fn is not None else wrap


def _check_roles(roles: tuple[str, ...] | None, session: bool) -> tuple[str, ...]:
    if roles is None:
        return ("device",)
    names = (roles,) if isinstance(roles, str) else tuple(roles)
    bad = [r for r in names if not isinstance(r, str) or not r.isidentifier()
           or r.startswith("labq_")]
    if not names or bad or len(set(names)) != len(names):
        raise ConfigError("roles", roles, "give distinct argument names, such as "
                          "('dut', 'peer'), none starting with labq_")
    if not session and names != ("device",):
        raise ConfigError("roles", roles, "a session=False task has the one role 'device'")
    return names


def _run_on_device(task: DeviceTask, func: Callable[..., Any], device: str,
                   kwargs: dict[str, Any]) -> Any:
    ctx = worker_context(task.app)
    dev = ctx.device(device)
    # Called as a plain function, the task runs here, under a one-off holder name.
    holder = task.request.id or f"direct-{uuid.uuid4().hex}"
    grant = _take_lease(task, ctx.leases, dev.name, dev.max_sessions, holder)
    failure: BaseException | None = None
    try:
        with Renewer(ctx.leases, grant):
            session = open_session(dev, task.connect_timeout)
            try:
                result = func(session, **kwargs)
                if task.labq_health_check:
                    record_check(ctx.leases, dev.name, holder, None)
                return result
            except SoftTimeLimitExceeded as exc:
                # The device may be mid-command: drop the link, don't say goodbye.
                session.abort()
                pending = session.pending
                raise SoftTimeout.on(dev.name, session.gathered(),
                                     pending.command if pending else None) from exc
            finally:
                session.close()
    except BaseException as exc:
        failure = exc
        if task.labq_health_check and not isinstance(exc, NOT_FAILURES):
            record_check(ctx.leases, dev.name, holder, exc)
        raise
    finally:
        if not hold_after(task, ctx.leases, holder, failure):
            _release(task, ctx.leases, dev.name, holder)


def _rides_with_result(task: DeviceTask) -> bool:
    """Whether lease commands can ride on this task's result store: labq's
    backend, on the lease's Redis, in a worker (an eager or a direct call
    stores nothing)."""
    settings = task.app.labq_settings
    request = task.request
    return (not request.is_eager and not request.called_directly
            and isinstance(task.backend, LabqRedisBackend)
            and settings.backend_url == settings.broker_url)


def _release(task: DeviceTask, leases: Leases, device: str, holder: str) -> None:
    """Release the lease with the task's stored end, else at once."""
    if not _rides_with_result(task):
        leases.release(device, holder)
        return
    task.backend.add_rider(Rider(
        holder,
        queue=lambda pipe: leases.queue_release(pipe, device, holder),
        fallback=lambda: leases.release(device, holder),
    ))


def _release_all(task: DeviceTask, leases: Leases, holder: str) -> None:
    """Release every lease of ``holder`` with the task's stored end, else at once."""
    if not _rides_with_result(task):
        leases.release_all(holder)
        return
    task.backend.add_rider(Rider(
        holder,
        queue=lambda pipe: leases.queue_release_all(pipe, holder),
        fallback=lambda: leases.release_all(holder),
    ))


def _end_all(task: DeviceTask, leases: Leases, holder: str,
             failure: BaseException | None) -> None:
    """Hold ``holder``'s leases after a failure its run asked to hold for, else release them."""
    if not hold_after(task, leases, holder, failure):
        _release_all(task, leases, holder)


def _take_lease(task: DeviceTask, leases: Leases, device: str, max_sessions: int,
                holder: str) -> Grant:
    """The device's lease, or a parked retry that frees the slot and keeps the place in line.

    A waiter parks at once (:func:`labq.worker.parking.park`): its retry is
    pushed to the front of its queue when a session opens to it. A direct
    call has no slot to give back: it waits in place, polling.
    """
    since_key = wait_since_key(holder)
    # Only a retry or a redelivery can have waited before: a first try skips the read.
    request = task.request
    again = request.retries or (request.delivery_info or {}).get("redelivered")
    raw = leases.client.get(since_key) if again else None
    since = float(raw) if raw else None
    at_start = getattr(request, "labq_lease_at_start", None)
    answer = at_start.answer if at_start is not None else None
    refused = False
    while True:
        if answer is None:
            answer = leases.acquire(device, holder, max_sessions, since=since,
                                    task=task.name, worker=task.request.hostname or "",
                                    checking=task.labq_health_check)
        if isinstance(answer, Grant):
            if since is not None:
                leases.client.delete(since_key)
            return answer
        if answer.waited > task.lease_timeout:
            leases.abandon_wait(device, holder)
            leases.client.delete(since_key)
            raise answer.busy()
        if since is None:
            # Kept beyond the lease's own waiter TTL: a retry that comes back
            # late still rejoins the line at its first place.
            since = answer.waiting_since
            leases.client.set(since_key, repr(since), ex=int(task.lease_timeout) + 60)
        # A health check waits in its slot: parked, a device whose health
        # blocks would wake it at once, again and again.
        polls = request.called_directly or task.labq_health_check
        if refused or polls:
            time.sleep(POLL)
        if not polls:
            park(task, leases, [[(device, max_sessions)]], answer.waiting_since,
                 wake_in(task.lease_timeout, answer.waited), single=True)
            refused = True  # a session opened meanwhile: ask again
        answer = None
