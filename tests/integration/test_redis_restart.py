"""Redis restarted in the middle of a run (SIGTERM, then started again on the
same data directory and port, its append-only file replayed).

Queued tasks survive, the workers reconnect and go on consuming (celery#8030:
a worker that reconnects but never consumes again), and the run itself
waits the outage out (LABQ_REDIS_RETRY_TIMEOUT) instead of failing. Tasks
that were running when Redis went away are cancelled by Celery
(worker_cancel_long_running_tasks_on_connection_loss): they could not be
acknowledged, so they end ``cancelled`` at once rather than run a second time
when the visibility timeout hands their message out again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

import labq
from conftest import stack_settings
from faults import restart_redis
from labq.embedded.stack import Stack, WorkerSpec, node_name
from labq.keys import fenced_key
from tasks import diag


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[Stack]:
    """Two workers with two slots each on their own Redis (AOF on)."""
    settings = stack_settings(tmp_path, concurrency=2)
    workers = (WorkerSpec("w1", ("labq",)), WorkerSpec("w2", ("labq",)))
    s = Stack(settings, workers=workers, with_flower=False, with_sim=False).start()
    yield s
    s.stop()


def unacked_ids(client: redis.Redis) -> set[str]:
    """Task ids of the messages kombu's ack emulation still holds."""
    return {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")}


def test_queued_tasks_survive_a_redis_restart(lab: Stack) -> None:
    settings = lab.settings
    record: dict[str, datetime] = {}
    with labq.Run("restart", settings=settings, progress=False, logs=False) as run:
        ids = run.submit_many(diag.sleep, [{"seconds": 1.5}] * 16)
        restarter = threading.Thread(target=restart_redis, args=(lab, 4, run.id, 3.0, record))
        restarter.start()
        try:
            outcomes = run.wait(timeout=180)
        finally:
            restarter.join()
    assert "back" in record, "Redis was not restarted"
    assert len(outcomes) == len(ids)
    assert all(o.status.final for o in outcomes), outcomes
    # Running when Redis went away: ended (cancelled, or done just before).
    # Not yet started: every one ran after the restart and succeeded.
    queued = [o for o in outcomes if o.started_at is None or o.started_at > record["term"]]
    assert len(queued) >= 8, f"only {len(queued)} tasks were still queued at the SIGTERM"
    assert [o.status for o in queued] == [labq.Status.SUCCEEDED] * len(queued), queued
    assert all(o.started_at and o.started_at >= record["back"] for o in queued
               if o.status is labq.Status.SUCCEEDED)
    for o in outcomes:
        assert o.status in (labq.Status.SUCCEEDED, labq.Status.CANCELLED), o
    assert {o.worker for o in queued} == {node_name("w1"), node_name("w2")}

    # Both workers go on consuming new work, and nothing waits for a late redelivery.
    with labq.Run("after", settings=settings, progress=False, logs=False) as after:
        after.submit_many(diag.sleep, [{"seconds": 0.5}] * 8)
    assert [o.status for o in after.outcomes] == [labq.Status.SUCCEEDED] * 8
    assert {o.worker for o in after.outcomes} == {node_name("w1"), node_name("w2")}
    client = redis.Redis.from_url(settings.broker_url)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    # A message still unacked belongs to a task Celery cancelled on the lost
    # connection (the run fenced it), or to one that succeeded just as the
    # connection went and could not ack (its result is stored). Either way its
    # redelivery, after the visibility timeout, will not run it again
    # (test_backend covers the second).
    # The after run's acks may still be on their way: a task's result is stored
    # (and seen by its run) before the worker's main process acks its message.
    after_ids = {o.task_id for o in after.outcomes}
    deadline = time.monotonic() + 10
    while after_ids & unacked_ids(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = unacked_ids(client)
    assert not left & after_ids, "the after run's messages were never acked"
    cancelled = {o.task_id for o in outcomes if o.status is labq.Status.CANCELLED}
    succeeded = {o.task_id for o in outcomes if o.status is labq.Status.SUCCEEDED}
    assert left <= cancelled | succeeded, left
    assert all(client.hexists(fenced_key(run.id), task_id) for task_id in left & cancelled)
    assert all(b'"SUCCESS"' in (client.get(f"celery-task-meta-{task_id}") or b"")
               for task_id in left & succeeded)
    client.close()
