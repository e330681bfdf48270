"""Device tasks on several devices, or on any device of a pool.

A task whose roles name a :class:`~labq.devices.pick.Pick`, or that has more
than one role, runs here instead of on the one-device path:

1. :func:`~labq.devices.selection.plan` lists, from the worker's testbed, the
   candidates of every role on each queue that can serve the whole task;
2. the worker takes one device per role on its own queue in one atomic
   Redis step (:meth:`~labq.devices.lease.Leases.acquire_set`), or waits
   holding nothing, its slot given back and its retry parked
   (:mod:`labq.worker.parking`) until its slots can all be filled;
3. while it waits, if another queue of the plan has a free assignment, the
   task leaves its lines and moves there (a retry to that queue): a Pick
   never waits on one segment's busy devices while another's sit free (a
   parked waiter is woken for that too);
4. the chosen devices are added to the task's start record, so the run's
   outcome says which devices ran (``Outcome.devices``);
5. one session per role, opened side by side, is passed to the function in
   role order; all are closed, and every lease is released with the task's stored end
   (``release_all``), also on a kill.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from typing import Any

from celery.exceptions import Retry, SoftTimeLimitExceeded

from labq.devices.drivers import Session, open_session
from labq.devices.lease import RESERVE_AFTER, Leases, SetGrant
from labq.devices.pick import Pick
from labq.devices.renewal import Renewer
from labq.devices.selection import Plan, assign, plan
from labq.errors import SoftTimeout
from labq.keys import wait_since_key
from labq.worker.parking import park, wake_in

log = logging.getLogger(__name__)


def run_on_devices(task: Any, ctx: Any, func: Callable[..., Any],
                   roles: Mapping[str, str | Pick], kwargs: dict[str, Any], *,
                   release: Callable[[Leases, str, BaseException | None], object],
                   poll: float) -> Any:
    """Lease a device for every role, call ``func(*sessions, **kwargs)``, release.

    ``release(leases, holder, failure)`` frees every lease of ``holder``
    (with the task's stored end where it can ride), or holds them after a
    ``failure`` (:mod:`labq.worker.holds`); ``ctx`` is the worker context
    (``testbed``, ``leases``, ``device()``).
    """
    settings = task.app.labq_settings
    found = plan(ctx.testbed, roles, settings.default_queue, task.name)
    request = task.request
    queue = (request.delivery_info or {}).get("routing_key") or found.preferred
    if queue not in found.queues:
        queue = found.preferred  # called directly, or the testbed changed under the task
    holder = request.id or f"direct-{uuid.uuid4().hex}"
    try:
        grant = _take(task, ctx, found, queue, holder, poll=poll)
    except Retry:
        raise  # a retry keeps its place (a move has left the lines already)
    except BaseException:
        ctx.leases.release_all(holder)  # a failure or an interrupt leaves every line
        raise
    chosen = dict(zip(found.roles, grant.devices, strict=True))
    failure: BaseException | None = None
    try:
        note = getattr(task, "note_devices", None)
        if note is not None:
            note(chosen)
        with ExitStack() as renewing:
            for g in grant.grants():
                renewing.enter_context(Renewer(ctx.leases, g))
            return _call(ctx, func, chosen, kwargs, task.connect_timeout)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        release(ctx.leases, holder, failure)


def _call(ctx: Any, func: Callable[..., Any], chosen: Mapping[str, str],
          kwargs: dict[str, Any], connect_timeout: float) -> Any:
    sessions: list[Session] = []
    try:
        sessions = _open_all([ctx.device(d) for d in chosen.values()], connect_timeout)
        return func(*sessions, **kwargs)
    except SoftTimeLimitExceeded as exc:
        for s in sessions:
            s.abort()  # mid-command, perhaps: drop, don't say goodbye
        partial: dict[str, str] = {}
        cut = None
        for role, s in zip(chosen, sessions, strict=False):
            for command, output in s.gathered().items():
                partial[f"{role}: {command}"] = output
            if s.pending is not None:
                cut = f"{role}: {s.pending.command}"
        raise SoftTimeout.on(", ".join(chosen.values()), partial, cut) from exc
    finally:
        for s in sessions:
            s.close()


def _open_all(devices: list[Any], connect_timeout: float) -> list[Session]:
    """One session per device, opened side by side: a topology waits for its
    slowest login, not for the sum of them. The first failure in role order
    is raised, once every other session is closed."""
    if len(devices) == 1:
        return [open_session(devices[0], connect_timeout)]
    pool = ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="labq-connect")
    futures = [pool.submit(open_session, dev, connect_timeout) for dev in devices]
    try:
        wait(futures)  # a soft time limit interrupts here
    except BaseException:
        for f in futures:  # a login still under way is closed once it is done
            f.add_done_callback(_close_opened)
        raise
    finally:
        pool.shutdown(wait=False)
    failed = [exc for exc in (f.exception() for f in futures) if exc is not None]
    if failed:
        for f in futures:
            _close_opened(f)
        raise failed[0]
    return [f.result() for f in futures]


def _close_opened(future: Future[Session]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _take(task: Any, ctx: Any, found: Plan, queue: str, holder: str, *,
          poll: float) -> SetGrant:
    leases: Leases = ctx.leases
    request = task.request
    since_key = wait_since_key(holder)
    again = request.retries or (request.delivery_info or {}).get("redelivered")
    raw = leases.client.get(since_key) if again else None
    since = float(raw) if raw else None
    slots = _slots(ctx, found.queues[queue])
    others = {q: s for q, s in found.queues.items() if q != queue}
    refused = False
    while True:
        answer = leases.acquire_set(slots, holder, task=task.name,
                                    worker=request.hostname or "", since=since)
        if isinstance(answer, SetGrant):
            if since is not None:
                leases.client.delete(since_key)
            return answer
        if answer.waited > task.lease_timeout:
            leases.client.delete(since_key)
            raise answer.busy()
        if since is None:
            since = answer.waiting_since
            leases.client.set(since_key, repr(since), ex=int(task.lease_timeout) + 60)
        if others and not request.called_directly:
            elsewhere = _free_queue(ctx, others)
            if elsewhere is not None:
                leases.release_all(holder)  # leave the lines here, keep the first-wait time
                log.info("task %s moves to queue %s, where its devices are free",
                         holder, elsewhere)
                raise task.retry(countdown=0, queue=elsewhere, routing_key=elsewhere,
                                 max_retries=None)
        if refused or request.called_directly:
            time.sleep(poll)
        if not request.called_directly:
            # Woken when its slots here can all be filled, or another queue's are free.
            wake = wake_in(task.lease_timeout, answer.waited)
            if answer.waited < RESERVE_AFTER:  # back when it may reserve
                wake = min(wake, RESERVE_AFTER - answer.waited + 0.05)
            park(task, leases, slots, answer.waiting_since, wake,
                 other=[_slots(ctx, s) for _, s in sorted(others.items())])
            refused = True  # it could be served meanwhile: ask again


def _slots(ctx: Any, slots: Any) -> list[list[tuple[str, int]]]:
    """Each slot's candidates with their max_sessions, as the lease scripts take them."""
    return [[(d, ctx.device(d).max_sessions) for d in slot.candidates] for slot in slots]


def _free_queue(ctx: Any, others: Mapping[str, Any]) -> str | None:
    """A queue where every role has a free device now, if any."""
    names = {d for slots in others.values() for s in slots for d in s.candidates}
    free = ctx.leases.free({d: ctx.device(d).max_sessions for d in names})
    for queue, slots in sorted(others.items()):
        if assign([s.candidates for s in slots], lambda d: d in free) is not None:
            return str(queue)
    return None
