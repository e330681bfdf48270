"""A run's tasks that ended without their worker: a dead host, or a stop
from outside the run.

Their messages can come back (the visibility timeout, a host whose link
returns), so the run fences their ids before anything else; a task whose
worker died is then run again once (idempotent) or ends ``lost``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import redis

from labq.outcome import Outcome, RemoteError, Status
from labq.task_base import RUN_TTL, fenced_key

if TYPE_CHECKING:
    from labq.run import Run

log = logging.getLogger(__name__)


def fence_stopped(run: Run, done: list[Outcome]) -> None:
    """Fence tasks stopped from outside the run (a revoke, or Celery's cancel
    when a worker loses Redis): their messages may still come back, with
    the visibility timeout, and must not run then."""
    stopped = [o.task_id for o in done if o.status is Status.CANCELLED]
    if not stopped or run._cancelled:
        return  # a cancel of our own is fenced by the run's cancel flag
    try:
        run.redis.hset(fenced_key(run.id), mapping=dict.fromkeys(stopped, "stopped"))
        run.redis.expire(fenced_key(run.id), RUN_TTL)
    except redis.RedisError as exc:
        log.warning("could not fence stopped tasks %s: %s", stopped, exc)


def check_workers(run: Run) -> list[Outcome]:
    """Settle the running tasks of workers whose heartbeat expired.

    A task that may run again (``idempotent``) is sent once more under a
    new id (see :attr:`Run.reruns`); any other becomes ``lost``. Either way
    its id is fenced first, so the old message, redelivered when the
    host returns or the visibility timeout passes, never runs it again.
    """
    running = {t: o.worker for t in run._pending()
               if (o := run._outcomes[t]).status is Status.RUNNING and o.worker}
    dead = run._watch.dead(running)
    if not dead:
        return []
    pipe = run.redis.pipeline()
    for task_id, worker in dead.items():
        pipe.hset(fenced_key(run.id), task_id, worker)
    pipe.expire(fenced_key(run.id), RUN_TTL)
    pipe.execute()
    lost = []
    at = datetime.now(timezone.utc)
    for task_id, worker in dead.items():
        release_leases(run.redis, task_id)
        old = run._outcomes[task_id]
        task = run.app.tasks.get(old.task)
        if getattr(task, "idempotent", False) and task_id not in run.reruns.values():
            rerun(run, task_id)
            continue
        run._outcomes[task_id] = old.with_status(Status.LOST, finished_at=at, error=RemoteError(
            "WorkerLost", f"worker {worker} stopped its heartbeat while running "
            f"{old.task} (silent for over {run.settings.worker_ttl * 1.5:g} s)", ""))
        lost.append(run._outcomes[task_id])
    return lost


def release_leases(client: redis.Redis, task_id: str) -> None:
    """Free a dead task's leases now; without the right (the ``client`` ACL
    user has none on leases) they expire with their TTL instead."""
    from labq.lease import Leases

    try:
        Leases(client).release_all(task_id)
    except redis.RedisError as exc:
        log.debug("leases of lost task %s left to expire: %s", task_id, exc)


def rerun(run: Run, task_id: str) -> str:
    """Send ``task_id``'s call again under a new id, in its place."""
    new_id = str(uuid.uuid4())
    name, args, body, queue, soft, hard = call = run._calls[task_id]
    run._send(name, args, body, task_id=new_id, queue=queue, soft=soft, hard=hard)
    run._queues.add(queue)
    run._calls[new_id] = call
    old = run._outcomes.pop(task_id)
    run._order[run._order.index(task_id)] = new_id
    run._outcomes[new_id] = Outcome(task_id=new_id, task=old.task, device=old.device,
                                    status=Status.QUEUED, queued_at=datetime.now(timezone.utc))
    run.reruns[task_id] = new_id
    return new_id
