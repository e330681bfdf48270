"""Run.submit_many: every item checked before anything is published, batches
consumed by real workers like any other message, partial failures named."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import labq
from conftest import SEGMENT_DEVICES
from labq import publish
from labq.app import LabqCelery, create_app
from labq.errors import PartialSubmit, SubmitError, TimeLimitError, UnknownDevice
from labq.redis_server import RedisServer
from labq.settings import Settings
from tasks import device, diag

QUEUES = ("labq", "lab-a", "lab-b")


def queue_lengths(client: redis.Redis) -> dict[str, int]:
    return {q: int(client.llen(q)) for q in QUEUES}


def test_workers_consume_a_batch_and_the_run_gathers_it(app: LabqCelery) -> None:
    names = [*SEGMENT_DEVICES["lab-a"][:3], *SEGMENT_DEVICES["lab-b"][:3]]
    with labq.Run("batch", app=app, progress=False) as run:
        ids = run.submit_many(device.execute, [{"device": n, "command": "show version"}
                                               for n in names], chunk=4)
        echo_ids = run.submit_many(diag.echo, [{"value": i} for i in range(20)], chunk=7)
    outcomes = {o.task_id: o for o in run.outcomes}
    assert [o.task_id for o in run.outcomes] == ids + echo_ids
    for task_id, name in zip(ids, names, strict=True):
        o = outcomes[task_id]
        assert o.status is labq.Status.SUCCEEDED, o.error
        assert o.device == name and f"{name} uptime is" in str(o.value)
        segment = "lab-a" if name in SEGMENT_DEVICES["lab-a"] else "lab-b"
        assert o.worker and o.worker.startswith(f"{segment}@")
    assert [outcomes[t].value for t in echo_ids] == list(range(20))


def test_nothing_is_published_when_any_item_is_invalid(app: LabqCelery) -> None:
    client = redis.Redis.from_url(app.labq_settings.broker_url)
    good = [{"device": n, "command": "show version"} for n in SEGMENT_DEVICES["lab-a"][:5]]
    run = labq.Run("invalid", app=app, progress=False)
    try:
        before = queue_lengths(client)
        with pytest.raises(UnknownDevice, match="a99"):
            run.submit_many(device.execute, [*good, {"device": "a99", "command": "x"}])
        with pytest.raises(SubmitError, match="not JSON"):
            run.submit_many(diag.echo, [{"value": 1}, {"value": object()}])
        with pytest.raises(TimeLimitError, match="soft_time_limit"):
            run.submit_many(diag.echo, [{"value": 1}], soft_time_limit=9, time_limit=5)
        assert queue_lengths(client) == before
        assert run.outcomes == []
    finally:
        run.close()
        client.close()


def test_a_batch_message_is_the_envelope_send_task_publishes(app: LabqCelery) -> None:
    """Same kombu envelope, field for field, except ids, tags and timestamps."""
    client = redis.Redis.from_url(app.labq_settings.broker_url)
    queue = "test-publish-unconsumed"
    client.delete(queue)
    try:
        msg = publish.build(app, diag.echo.name, (), {"value": 1}, task_id="batch-id",
                                 device=None, default_queue="labq", soft_time_limit=5,
                                 time_limit=10, queue=queue)
        publish.publish(app, [msg])
        app.send_task(diag.echo.name, kwargs={"value": 1}, task_id="plain-id", queue=queue,
                      soft_time_limit=5, time_limit=10)
        plain, batch = (json.loads(raw) for raw in client.lrange(queue, 0, -1))
    finally:
        client.delete(queue)
        client.close()

    def shape(m: dict[str, Any]) -> dict[str, Any]:
        m = json.loads(json.dumps(m))
        for key in ("id", "root_id"):
            m["headers"][key] = "<id>"
        m["headers"]["origin"] = "<origin>"
        m["properties"]["correlation_id"] = "<id>"
        m["properties"]["delivery_tag"] = "<tag>"
        m["properties"]["reply_to"] = "<oid>"
        return m

    b, p = shape(batch), shape(plain)
    assert {k: (v, p['headers'].get(k)) for k, v in b['headers'].items() if p['headers'].get(k) != v} == {}
    assert b == p
    assert batch["headers"]["id"] == "batch-id"
    assert batch["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}


@pytest.fixture()
def lone_app(redis_server: RedisServer, tmp_path: Path) -> Iterator[LabqCelery]:
    """An app on a Redis no worker consumes, so queued messages stay put."""
    settings = Settings.load(env={}, config_file=os.devnull, state_dir=tmp_path,
                             broker_url=redis_server.url)
    a = create_app(settings)
    yield a
    a.close()


def test_a_failure_mid_batch_names_what_was_queued(lone_app: LabqCelery,
                                                   redis_client: redis.Redis) -> None:
    """Redis refuses writes (maxmemory) after the first pipeline: the error
    names the queued, uncertain and unsent task ids; the run tracks the queued."""
    amqp = lone_app.amqp
    send = amqp.send_task_message
    calls = 0

    def send_then_refuse(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:  # the first message of the second chunk of 3
            redis_client.config_set("maxmemory", 1)
        return send(*args, **kwargs)

    amqp.__dict__["send_task_message"] = send_then_refuse
    run = labq.Run("partial", app=lone_app, progress=False)
    try:
        with pytest.raises(PartialSubmit) as info:
            run.submit_many(diag.echo, [{"value": i} for i in range(8)], chunk=3)
    finally:
        redis_client.config_set("maxmemory", 0)
        run.close()
    err = info.value
    assert len(err.queued) == 3 and len(err.uncertain) == 3 and len(err.unsent) == 2
    assert err.queued[0] in str(err) and "uncertain" in str(err)
    assert [o.task_id for o in run.outcomes] == err.queued
    queued = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("labq", 0, -1)]
    assert sorted(queued) == sorted(err.queued)
