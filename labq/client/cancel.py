"""Cancelling a run, durably: a flag in Redis stops queued tasks even across
worker restarts, a soft interrupt stops running ones, and a hard kill
follows after a grace period (:meth:`labq.Run.cancel`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import redis

from labq.client.run_state import RunState
from labq.errors import BrokerUnavailable
from labq.keys import RUN_TTL, cancel_key
from labq.outcome import Status


def cancel_run(state: RunState, client: redis.Redis, control: Any,
               refresh: Callable[[], object], grace: float) -> None:
    """Stop the run's tasks (see :meth:`labq.Run.cancel`).

    ``control`` is the app's Celery remote control, ``refresh`` reads the
    state of every pending task into ``state``.
    """
    state.cancelled = True
    try:
        client.set(cancel_key(state.run_id), "1", ex=RUN_TTL)
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"cannot record the cancel of {state.run_id!r}: {exc}") from exc
    refresh()
    pending = state.pending()
    if not pending:
        return
    purge_queued(client, state.queues, set(pending))
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


def purge_queued(client: redis.Redis, queues: frozenset[str], ids: set[str]) -> None:
    """Take the messages of ``ids`` off the Redis ``queues`` they wait in."""
    for queue in queues:
        try:
            for raw in client.lrange(queue, 0, -1):
                try:
                    task_id = json.loads(raw)["headers"]["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                if task_id in ids:
                    client.lrem(queue, 1, raw)  # type: ignore[arg-type]
        except redis.RedisError:
            continue  # the durable flag still stops them
