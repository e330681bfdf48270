"""A run's tasks that ended without their worker: a dead host, or a stop
from outside the run.

Their messages can come back (the visibility timeout, a host whose link
returns), so the run fences their ids before anything else; a task whose
worker died is then run again once (idempotent) or ends ``lost``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import redis

from labq.client.run_state import Call, RunState
from labq.devices.lease import Leases
from labq.keys import RUN_TTL, fenced_key
from labq.outcome import Outcome, RemoteError, Status
from labq.worker.liveness import WorkerWatch, dead_after

log = logging.getLogger(__name__)

#: Publishes a call again under a new task id, in place of the old one
#: (``Run._resend``): (new id, call, old id).
Resend = Callable[[str, Call, str], object]


def fence_stopped(state: RunState, client: redis.Redis, done: list[Outcome]) -> None:
    """Fence tasks stopped from outside the run (a revoke, or Celery's cancel
    when a worker loses Redis): their messages may still come back, with
    the visibility timeout, and must not run then."""
    stopped = [o.task_id for o in done if o.status is Status.CANCELLED]
    if not stopped or state.cancelled:
        return  # a cancel of our own is fenced by the run's cancel flag
    try:
        client.hset(fenced_key(state.run_id), mapping=dict.fromkeys(stopped, "stopped"))
        client.expire(fenced_key(state.run_id), RUN_TTL)
    except redis.RedisError as exc:
        log.warning("could not fence stopped tasks %s: %s", stopped, exc)


def check_workers(state: RunState, client: redis.Redis, watch: WorkerWatch,
                  tasks: Mapping[str, Any], worker_ttl: float,
                  resend: Resend | None) -> list[Outcome]:
    """Settle the running tasks of workers whose heartbeat expired.

    A task that may run again (``idempotent`` on its entry in ``tasks``,
    the app's registry) is sent once more under a new id through
    ``resend`` (see :attr:`labq.Run.reruns`); any other becomes ``lost``.
    Either way its id is fenced first, so the old message, redelivered when
    the host returns or the visibility timeout passes, never runs it again.
    Without ``resend`` (a run attached to, which lacks its calls' arguments)
    every such task becomes ``lost``.
    """
    running = {t: o.worker for t in state.running() if (o := state.outcome(t)).worker}
    dead = watch.dead(running)
    if not dead:
        return []
    pipe = client.pipeline()
    for task_id, worker in dead.items():
        pipe.hset(fenced_key(state.run_id), task_id, worker)
    pipe.expire(fenced_key(state.run_id), RUN_TTL)
    pipe.execute()
    lost = []
    at = datetime.now(timezone.utc)
    for task_id, worker in dead.items():
        release_leases(client, task_id)
        old = state.outcome(task_id)
        task = tasks.get(old.task)
        if (resend is not None and getattr(task, "idempotent", False)
                and task_id not in state.reruns.values()):
            rerun(state, task_id, resend)
            continue
        lost += state.end([task_id], Status.LOST, finished_at=at, error=RemoteError(
            "WorkerLost", f"worker {worker} stopped its heartbeat while running "
            f"{old.task} (silent for over {dead_after(worker_ttl):g} s)", ""))
    return lost


def release_leases(client: redis.Redis, task_id: str) -> None:
    """Free a dead task's leases now; without the right (the ``client`` ACL
    user has none on leases) they expire with their TTL instead."""
    try:
        Leases(client).release_all(task_id)
    except redis.RedisError as exc:
        log.debug("leases of lost task %s left to expire: %s", task_id, exc)


def rerun(state: RunState, task_id: str, resend: Resend) -> str:
    """Send ``task_id``'s call again under a new id, in its place."""
    new_id = str(uuid.uuid4())
    resend(new_id, state.call(task_id), task_id)
    state.replace(task_id, new_id)
    return new_id
