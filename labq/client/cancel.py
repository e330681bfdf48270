"""Cancelling a run, durably: a flag in Redis stops queued tasks even across
worker restarts, a soft interrupt stops running ones, and a hard kill
follows after a grace period (:meth:`labq.Run.cancel`). The same steps run
from another process, by run id (:func:`cancel_by_id`, ``labq cancel``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from celery.states import READY_STATES

from labq.client.run_info import RunInfo, record_end
from labq.client.run_state import RunState
from labq.errors import BrokerUnavailable
from labq.fairshare.backlogs import Backlogs
from labq.keys import RESULT_PREFIX, RUN_KWARG, cancel_key, fenced_key, starts_key
from labq.outcome import Outcome, Status
from labq.redis_client import text
from labq.worker.liveness import read_workers
from labq.worker.parking import UNPARK_COMMAND

log = logging.getLogger(__name__)


def fence_stopped(state: RunState, client: redis.Redis, done: list[Outcome],
                  retention: float) -> None:
    """Fence tasks stopped from outside the run (a revoke, or Celery's cancel
    when a worker loses Redis): their messages may still come back, with
    the visibility timeout, and must not run then."""
    stopped = [o.task_id for o in done if o.status is Status.CANCELLED]
    if not stopped or state.cancelled:
        return  # a cancel of our own is fenced by the run's cancel flag
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hset(fenced_key(state.run_id), mapping=dict.fromkeys(stopped, "stopped"))
        pipe.expire(fenced_key(state.run_id), int(retention))
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not fence stopped tasks %s: %s", stopped, exc)


def cancel_run(state: RunState, client: redis.Redis, control: Any,
               refresh: Callable[[], object], grace: float, retention: float,
               backlogs: Backlogs | None = None) -> None:
    """Stop the run's tasks (see :meth:`labq.Run.cancel`).

    ``control`` is the app's Celery remote control, ``refresh`` reads the
    state of every pending task into ``state``; ``backlogs`` holds the
    run's tasks that wait for their fair share.
    """
    state.cancelled = True
    try:
        client.set(cancel_key(state.run_id), "1", ex=int(retention))
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"cannot record the cancel of {state.run_id!r}: {exc}") from exc
    refresh()
    pending = state.pending()
    if not pending:
        return
    waiting = set(pending)
    drop_backlogs(client, state.run_id, state.queues, backlogs)
    purge(client, state.queues, lambda m: _task_id(m) in waiting)
    # Waiters parked for their devices run nowhere: drop them, and they end now.
    state.end(unpark(client, control, pending), Status.CANCELLED,
              finished_at=datetime.now(timezone.utc))
    control.revoke(pending)  # workers drop these if a message still arrives
    running = [t for t in pending if state.outcome(t).status is Status.RUNNING]
    if running:
        control.revoke(running, terminate=True, signal="SIGUSR1")
    try:
        end = time.monotonic() + grace
        while time.monotonic() < end and state.running():
            time.sleep(0.1)
            refresh()
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: kill now
    finally:
        still = state.running()
        if still:
            control.revoke(still, terminate=True, signal="SIGKILL")
    state.end(state.pending(), Status.CANCELLED, finished_at=datetime.now(timezone.utc))


def drop_backlogs(client: redis.Redis, run_id: str, queues: Iterable[str],
                  backlogs: Backlogs | None = None) -> int:
    """Drop the run's tasks still in its fair-share backlogs; how many."""
    try:
        return (backlogs or Backlogs(client)).drop(run_id, queues)
    except redis.RedisError as exc:  # the durable flag still stops them when dispatched
        log.warning("run %s: backlogs not dropped: %s", run_id, exc)
        return 0


def purge(client: redis.Redis, queues: frozenset[str],
          wanted: Callable[[dict[str, Any]], bool]) -> int:
    """Take the messages for which ``wanted(envelope)`` holds off ``queues``;
    how many were taken."""
    taken = 0
    for queue in queues:
        try:
            for raw in client.lrange(queue, 0, -1):
                try:
                    envelope = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(envelope, dict) and wanted(envelope):
                    taken += int(client.lrem(queue, 1, raw))  # type: ignore[arg-type]
        except redis.RedisError:
            continue  # the durable flag still stops them
    return taken


def unpark(client: redis.Redis, control: Any, task_ids: list[str]) -> list[str]:
    """Have the workers drop the parked retries of ``task_ids`` (they own the
    leases); the ids they dropped. Without an answer, the cancel flag still
    stops those tasks when they wake."""
    if not task_ids:
        return []
    try:
        live = len(read_workers(client))
        replies = control.broadcast(UNPARK_COMMAND, arguments={"task_ids": task_ids},
                                    reply=True, timeout=1.0, limit=live or None) or []
    except Exception as exc:
        log.warning("could not ask the workers to drop parked retries: %s", exc)
        return []
    dropped: list[str] = []
    for reply in replies:
        for answer in reply.values():
            if isinstance(answer, dict):
                dropped += [str(t) for t in answer.get("unparked") or ()]
    return dropped


def _task_id(envelope: dict[str, Any]) -> str | None:
    headers = envelope.get("headers")
    return headers.get("id") if isinstance(headers, dict) else None


def _run_of(envelope: dict[str, Any]) -> str | None:
    """The run a queued message belongs to (its ``labq_run`` keyword argument)."""
    try:
        body = json.loads(base64.b64decode(envelope["body"]))
        return str(body[1].get(RUN_KWARG)) if isinstance(body[1], dict) else None
    except (ValueError, KeyError, TypeError, IndexError):
        return None


@dataclass(frozen=True)
class RemoteCancel:
    """What :func:`cancel_by_id` did to a run."""

    run_id: str
    #: Messages taken off the queues, and waiters' parked retries, before they ran.
    dropped: int
    #: Started tasks that got the soft interrupt.
    interrupted: int
    #: Of those, the ones still running after the grace: killed.
    killed: int


def cancel_by_id(client: redis.Redis, control: Any, run: RunInfo, grace: float,
                 retention: float) -> RemoteCancel:
    """Cancel ``run`` from a process other than its own, as :meth:`labq.Run.cancel` does.

    The durable flag goes first: every task not started yet refuses to
    start, on any worker, even one that restarts. Then the run's messages
    are taken off its queues, its started tasks get the soft interrupt, and
    those still running after ``grace`` the hard kill. The run's own
    process sees the flag and ends its wait with the tasks cancelled.
    """
    try:
        client.set(cancel_key(run.id), "1", ex=int(retention))
        record_end(client, run.id, "cancelled", retention)
        started = [text(t) for t in client.hkeys(starts_key(run.id))]
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot record the cancel of {run.id!r}: {exc}") from exc
    dropped = drop_backlogs(client, run.id, run.queues)
    dropped += purge(client, frozenset(run.queues), lambda m: _run_of(m) == run.id)
    unparked = set(unpark(client, control, started))
    dropped += len(unparked)
    started = [t for t in started if t not in unparked]

    def unfinished(ids: list[str]) -> list[str]:
        if not ids:
            return []
        try:
            raw = client.mget([RESULT_PREFIX + t for t in ids])
        except redis.RedisError:
            return ids  # unknown: treat as running, the kill is harmless
        return [t for t, r in zip(ids, raw, strict=True) if not _final(r)]

    running = unfinished(started)
    if running:
        control.revoke(running, terminate=True, signal="SIGUSR1")
    still = running
    end = time.monotonic() + grace
    try:
        while still and time.monotonic() < end:
            time.sleep(0.1)
            still = unfinished(still)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: kill now
    if still:
        control.revoke(still, terminate=True, signal="SIGKILL")
    return RemoteCancel(run.id, dropped, len(running), len(still))


def _final(raw: Any) -> bool:
    """Whether a stored result record is a final one."""
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("status") in READY_STATES
