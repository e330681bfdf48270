"""labq's result backend (labq.worker.backend): Celery's records in one round trip
per state, with each end announced on its run's done stream."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery import states
from celery.app.task import Context
from celery.backends.redis import RedisBackend

import labq
from labq.app import LabqCelery
from labq.embedded.stack import Stack
from labq.keys import RUN_KWARG, SCRIPT_KWARG, done_key, log_key
from labq.worker.backend import LabqRedisBackend, Rider
from tasks import diag


def request(app: LabqCelery, task_id: str, run_id: str | None) -> Context:
    kwargs = {"value": 1} if run_id is None else {"value": 1, RUN_KWARG: run_id}
    return Context(id=task_id, task=diag.echo.name, args=[], kwargs=kwargs,
                   hostname="w@test", delivery_info={"routing_key": "labq"})


def done_entries(client: redis.Redis, run_id: str) -> list[tuple[str, str]]:
    """(task id, status) of each entry on the run's done stream, in order."""
    entries: Any = client.xrange(done_key(run_id))
    return [(f[b"task_id"].decode(), f[b"status"].decode()) for _id, f in entries]


def test_the_app_uses_it_and_stores_what_celerys_backend_stores(
        lone_app: LabqCelery, redis_client: redis.Redis) -> None:
    backend = lone_app.backend
    assert isinstance(backend, LabqRedisBackend)
    stock = RedisBackend(app=lone_app, url=lone_app.conf.result_backend)
    ours = request(lone_app, "stored-ours", None)
    theirs = request(lone_app, "stored-stock", None)
    backend.store_result("stored-ours", {"ok": [1, "ä"]}, states.SUCCESS, request=ours)
    stock.store_result("stored-stock", {"ok": [1, "ä"]}, states.SUCCESS, request=theirs)
    a = json.loads(redis_client.get(backend.get_key_for_task("stored-ours")) or "{}")
    b = json.loads(redis_client.get(stock.get_key_for_task("stored-stock")) or "{}")
    for meta in (a, b):
        meta.pop("date_done")
        meta.pop("task_id")
    assert a == b and a["status"] == "SUCCESS" and a["result"] == {"ok": [1, "ä"]}
    ttl = redis_client.ttl(backend.get_key_for_task("stored-ours"))
    assert 0 < ttl <= int(lone_app.conf.result_expires)
    stock.client.close()


def test_success_is_never_overwritten(lone_app: LabqCelery) -> None:
    backend = lone_app.backend
    ctx = request(lone_app, "done-once", None)
    backend.store_result("done-once", 42, states.SUCCESS, request=ctx)
    backend.store_result("done-once", {"pid": 1}, states.STARTED, request=ctx)
    backend.store_result("done-once", None, states.RETRY, request=ctx)
    meta = backend.get_task_meta("done-once")
    assert (meta["status"], meta["result"]) == ("SUCCESS", 42)


def test_ends_of_run_tasks_are_announced_and_nothing_else(
        lone_app: LabqCelery, redis_client: redis.Redis) -> None:
    backend = lone_app.backend
    run_id = "announce-run"
    redis_client.delete(done_key(run_id))
    backend.store_result("t-retry", None, states.RETRY, request=request(lone_app, "t-retry", run_id))
    backend.store_result("t-ok", 1, states.SUCCESS, request=request(lone_app, "t-ok", run_id))
    backend.mark_as_failure("t-bad", ValueError("no"), request=request(lone_app, "t-bad", run_id))
    backend.mark_as_revoked("t-rev", "revoked", request=request(lone_app, "t-rev", run_id))
    backend.store_result("t-plain", 1, states.SUCCESS, request=request(lone_app, "t-plain", None))
    assert done_entries(redis_client, run_id) == [
        ("t-ok", "SUCCESS"), ("t-bad", "FAILURE"), ("t-rev", "REVOKED")]
    assert redis_client.ttl(done_key(run_id)) > 0


def test_a_plain_celery_client_still_gets_its_result(app: LabqCelery) -> None:
    # The result channel's PUBLISH is kept: get() wakes on it.
    plain = app.send_task(diag.echo.name, args=["plain"], queue="labq")
    assert plain.get(timeout=30) == "plain"
    running = app.send_task(diag.sleep.name, kwargs={"seconds": 1.0}, queue="labq")
    deadline = time.monotonic() + 20
    while running.state != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.state == "STARTED"
    assert running.get(timeout=30)["slept"] == 1.0


def test_a_run_task_is_started_then_done_with_its_start_record(app: LabqCelery) -> None:
    with labq.Run("started", app=app, progress=False) as run:
        task_id = run.submit(diag.sleep, seconds=1.0)
        deadline = time.monotonic() + 20
        while app.AsyncResult(task_id).state != "STARTED" and time.monotonic() < deadline:
            time.sleep(0.05)
        meta = app.backend.get_task_meta(task_id)
        assert meta["status"] == "STARTED" and meta["result"]["hostname"]
        assert meta["kwargs"][RUN_KWARG] == run.id
    (outcome,) = run.outcomes
    assert outcome.status is labq.Status.SUCCEEDED and outcome.started_at is not None


def test_the_store_script_is_loaded_again_after_redis_forgets_it(
        app: LabqCelery, stack: Stack) -> None:
    client = redis.Redis.from_url(stack.settings.broker_url)
    try:
        with labq.Run("noscript", app=app, progress=False) as run:
            run.submit(diag.echo, value=1)
        client.script_flush()  # as a Redis restart does
        with labq.Run("noscript", app=app, progress=False) as run:
            ids = [run.submit(diag.echo, value=i) for i in range(8)]
        assert [o.status for o in run.outcomes] == [labq.Status.SUCCEEDED] * 8
        assert [o.value for o in run.outcomes] == list(range(8))
        assert {t for t, _status in done_entries(client, run.id)} == set(ids)
    finally:
        client.close()


def test_a_hard_kill_stored_by_the_main_process_wakes_the_run(app: LabqCelery) -> None:
    with labq.Run("hard-announce", app=app, progress=False) as run:
        task_id = run.submit(diag.stubborn, soft_time_limit=1, time_limit=2)
    (outcome,) = run.outcomes
    # Where the soft interrupt landed, if it ended the task: its traceback.
    assert outcome.status is labq.Status.HARD_TIMEOUT, (
        outcome.error, outcome.error and outcome.error.traceback)
    client = redis.Redis.from_url(app.conf.result_backend)
    try:
        # Celery stores a hard kill twice (on_timeout, then on_failure).
        assert set(done_entries(client, run.id)) == {(task_id, "FAILURE")}
    finally:
        client.close()


def test_a_redelivered_message_of_a_succeeded_task_does_not_run_it_again(
        app: LabqCelery) -> None:
    # As when a task succeeds just as its worker loses Redis and cannot ack.
    with labq.Run("once", app=app, progress=False) as run:
        task_id = run.submit(diag.sleep, seconds=0.2)
    first = app.backend.get_task_meta(task_id)
    assert first["status"] == "SUCCESS"
    app.send_task(diag.sleep.name, kwargs={"seconds": 0.2, RUN_KWARG: run.id,
                                           SCRIPT_KWARG: "redelivery"},
                  task_id=task_id, queue="labq")
    probe = app.send_task(diag.echo.name, args=[1], queue="labq")
    assert probe.get(timeout=30) == 1
    time.sleep(1.0)  # both workers had the time to take the redelivery
    client = redis.Redis.from_url(app.conf.result_backend)
    try:
        runs: Any = client.xrange(log_key(run.id))
        sleeping = [f for _id, f in runs
                    if f[b"task_id"].decode() == task_id and b"sleeping" in f[b"message"]]
    finally:
        client.close()
    assert len(sleeping) == 1, sleeping
    assert app.backend.get_task_meta(task_id)["date_done"] == first["date_done"]


def test_a_rider_goes_with_the_stored_end_not_with_started(
        lone_app: LabqCelery, redis_client: redis.Redis) -> None:
    backend = lone_app.backend
    sent: list[str] = []
    rider = Rider("ride-1", queue=lambda pipe: pipe.set("ride-1:rode", "yes"),
                  fallback=lambda: sent.append("fallback"))
    backend.add_rider(rider)
    ctx = request(lone_app, "ride-1", None)
    backend.store_result("ride-1", {"pid": 1}, states.STARTED, request=ctx)
    assert redis_client.get("ride-1:rode") is None
    backend.store_result("ride-1", 7, states.SUCCESS, request=ctx)
    assert redis_client.get("ride-1:rode") == b"yes"
    assert backend.get_task_meta("ride-1")["result"] == 7
    backend.process_cleanup()
    assert sent == []  # it rode: the fallback never runs


def test_a_rider_that_fails_or_never_rides_runs_its_fallback_once(
        lone_app: LabqCelery, redis_client: redis.Redis) -> None:
    backend = lone_app.backend
    sent: list[str] = []
    # Its command fails (a script Redis does not have, as after a restart):
    backend.add_rider(Rider("ride-2", queue=lambda pipe: pipe.evalsha("0" * 40, 0),
                            fallback=lambda: sent.append("ride-2")))
    backend.store_result("ride-2", 1, states.SUCCESS, request=request(lone_app, "ride-2", None))
    assert sent == ["ride-2"]
    assert backend.get_task_meta("ride-2")["status"] == "SUCCESS"
    # No end is stored (an Ignore): the tracer's cleanup runs it.
    backend.add_rider(Rider("ride-3", queue=lambda pipe: pipe.ping(),
                            fallback=lambda: sent.append("ride-3")))
    backend.process_cleanup()
    backend.process_cleanup()
    assert sent == ["ride-2", "ride-3"]
