"""Cancelling a run, durably: a flag in Redis stops queued tasks even across
worker restarts, a soft interrupt stops running ones, and a hard kill
follows after a grace period (:meth:`labq.Run.cancel`).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import redis

from labq.errors import BrokerUnavailable
from labq.outcome import Outcome, Status
from labq.task_base import RUN_TTL, cancel_key

if TYPE_CHECKING:
    from labq.run import Run


def cancel_run(run: Run, grace: float) -> list[Outcome]:
    """Stop ``run``'s tasks (see :meth:`labq.Run.cancel`); every outcome."""
    run._cancelled = True
    try:
        run.redis.set(cancel_key(run.id), "1", ex=RUN_TTL)
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"cannot record the cancel of {run.id!r}: {exc}") from exc
    run.refresh()
    pending = run._pending()
    if not pending:
        return run.outcomes
    purge_queued(run, set(pending))
    control = run.app.control
    control.revoke(pending)  # workers drop these if a message still arrives
    running = [t for t in pending if run._outcomes[t].status is Status.RUNNING]
    if running:
        control.revoke(running, terminate=True, signal="SIGUSR1")
    try:
        end = time.monotonic() + grace
        while time.monotonic() < end and any(
                run._outcomes[t].status is Status.RUNNING for t in run._pending()):
            time.sleep(0.1)
            run.refresh()
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: kill now
    finally:
        still = [t for t in run._pending() if run._outcomes[t].status is Status.RUNNING]
        if still:
            control.revoke(still, terminate=True, signal="SIGKILL")
    now = datetime.now(timezone.utc)
    for task_id in run._pending():
        old = run._outcomes[task_id]
        run._outcomes[task_id] = old.with_status(Status.CANCELLED, finished_at=now)
    return run.outcomes


def purge_queued(run: Run, ids: set[str]) -> None:
    """Take the run's messages off the Redis queues they wait in."""
    for queue in run._queues:
        try:
            for raw in run.redis.lrange(queue, 0, -1):
                try:
                    task_id = json.loads(raw)["headers"]["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                if task_id in ids:
                    run.redis.lrem(queue, 1, raw)  # type: ignore[arg-type]
        except redis.RedisError:
            continue  # the durable flag still stops them
