"""Run.submit_many: every item checked before anything is published, batches
consumed by real workers like any other message, partial failures named."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
import time
from typing import Any

import pytest
import redis

import labq
from conftest import SEGMENT_DEVICES
from labq.app import LabqCelery
from labq.client import messages, publish
from labq.devices.testbed_yaml import load_testbed
from labq.errors import PartialSubmit, SubmitError, TimeLimitError, UnknownDevice
from labq.keys import OWNER_KWARG, PRIORITY_KWARG, RUN_KWARG, SCRIPT_KWARG, backlog_key
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
        msg = messages.build(app, diag.echo.name, (), {"value": 1}, task_id="batch-id",
                             device=None, default_queue="labq", soft_time_limit=5,
                             time_limit=10, queue=queue)
        with app.producer_or_acquire() as producer:
            assert publish.wire_for(app, producer, [msg]) is not None  # the raw path runs
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


def unwrap(raw: bytes) -> tuple[dict[str, Any], Any]:
    """A kombu Redis envelope and its decoded body."""
    envelope = json.loads(raw)
    return envelope, json.loads(base64.b64decode(envelope["body"]))


@pytest.mark.parametrize(("priority", "key_suffix", "routed"),
                         [(None, "", False), (5, "\x06\x163", False), (None, "", True)])
def test_the_raw_path_writes_kombus_bytes_and_events(lone_app: LabqCelery,
                                                      redis_client: redis.Redis,
                                                      priority: int | None,
                                                      key_suffix: str, routed: bool) -> None:
    """For the same task, the raw pipeline LPUSHes the very JSON text kombu's
    producer LPUSHes (delivery tag aside), on the same priority list, and
    PUBLISHes the same task-sent event on the same channel (tag, clock and
    timestamp aside). ``routed``: with the routing key the device router
    adds beside the queue."""
    app = lone_app
    topic = "/0.celeryev/task.sent"
    pubsub = redis_client.pubsub()
    pubsub.subscribe(topic)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    queue = "test-raw-vs-kombu"

    def one(raw: bool) -> messages.TaskMessage:
        m = messages.build(app, diag.echo.name, (), {"value": "ä", "n": [1, 2.5, None]},
                           task_id="same-id", device=None, default_queue="labq",
                           soft_time_limit=5, time_limit=10, queue=queue)
        if priority is not None:
            m = dataclasses.replace(m, options={**m.options, "priority": priority})
        if routed:
            m = dataclasses.replace(m, options={**m.options, "routing_key": queue})
        return m

    try:
        clock0 = app.clock.value
        with app.producer_or_acquire() as producer:
            assert publish.wire_for(app, producer, [one(True)]) is not None  # the raw path runs
        publish.publish(app, [one(True)], raw=True)
        publish.publish(app, [one(False)], raw=False)
        assert redis_client.keys(f"{queue}*") == [(queue + key_suffix).encode()]
        kombu_text, raw_text = redis_client.lrange(queue + key_suffix, 0, -1)
        events = []
        while len(events) < 2:
            m = pubsub.get_message(timeout=5)
            assert m is not None, "no task-sent event published"
            if m["type"] == "message":
                assert m["channel"] == topic.encode()
                events.append(m["data"])
    finally:
        redis_client.delete(queue, queue + key_suffix)
        pubsub.close()
    (raw_env, raw_body), (kombu_env, kombu_body) = unwrap(raw_text), unwrap(kombu_text)
    tag = raw_env["properties"]["delivery_tag"]
    assert raw_text.replace(tag.encode(), kombu_env["properties"]["delivery_tag"].encode()) == \
        kombu_text
    assert raw_body == kombu_body == [[], {"value": "ä", "n": [1, 2.5, None]},
                                      {"callbacks": None, "errbacks": None, "chain": None,
                                       "chord": None}]

    (raw_ev_env, raw_ev), (kombu_ev_env, kombu_ev) = unwrap(events[0]), unwrap(events[1])
    assert raw_ev["clock"] > clock0 and kombu_ev["clock"] > raw_ev["clock"]
    assert abs(raw_ev["timestamp"] - kombu_ev["timestamp"]) < 60
    for ev, env in ((raw_ev, raw_ev_env), (kombu_ev, kombu_ev_env)):
        ev["clock"] = ev["timestamp"] = env["properties"]["delivery_tag"] = "<varies>"
        env["body"] = "<checked>"
    assert list(raw_ev) == list(kombu_ev)  # same key order

    def text(raw: bytes) -> str:  # the event's JSON text, varying values masked
        body = base64.b64decode(json.loads(raw)["body"]).decode()
        return re.sub(r'"(clock|timestamp)": [0-9.e+-]+', r'"\1": <varies>', body)

    assert text(events[0]) == text(events[1])
    assert re.sub(r'"delivery_tag": "[^"]+"', "", re.sub(r'"body": "[^"]+"', "",
                                                           events[0].decode())) == \
        re.sub(r'"delivery_tag": "[^"]+"', "", re.sub(r'"body": "[^"]+"', "", events[1].decode()))
    assert raw_ev == kombu_ev and raw_ev_env == kombu_ev_env
    assert raw_ev["type"] == "task-sent" and raw_ev["uuid"] == "same-id"
    assert raw_ev["queue"] == raw_ev["routing_key"] == queue


def test_an_event_receiver_sees_task_sent_for_each_task(lone_app: LabqCelery,
                                                        redis_client: redis.Redis) -> None:
    """Celery's own event Receiver (what Flower runs) gets one task-sent per
    task of a raw batch, with the task's name, args and queue."""
    app = lone_app
    with app.producer_or_acquire() as producer:
        assert publish.wire_for(app, producer, []) is not None  # the raw path runs
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"task-sent": seen.append})
        thread = threading.Thread(target=receiver.capture,
                                  kwargs={"limit": 12, "timeout": 30, "wakeup": False})
        thread.start()
        try:
            deadline = time.monotonic() + 20
            # kombu subscribes to the pattern /0.celeryev/* (fanout_patterns).
            while not redis_client.pubsub_numpat():
                assert time.monotonic() < deadline, "the receiver never subscribed"
                time.sleep(0.05)
            run = labq.Run("events", app=app, progress=False)
            try:
                ids = run.submit_many(diag.echo, [{"value": i} for i in range(12)], chunk=5)
            finally:
                run.close()
            thread.join(30)
        finally:
            receiver.should_stop = True
            thread.join(5)
    assert [e["uuid"] for e in seen] == ids
    assert {e["name"] for e in seen} == {diag.echo.name}
    assert {e["queue"] for e in seen} == {"labq"}
    assert [e["kwargs"].split(",")[0] for e in seen] == [f"{{'value': {i}" for i in range(12)]
    assert [e["clock"] for e in seen] == sorted(e["clock"] for e in seen)
    redis_client.delete("labq")


@pytest.mark.parametrize("path", ["raw", "kombu"])
def test_a_failure_mid_batch_names_what_was_queued(lone_app: LabqCelery,
                                                   redis_client: redis.Redis,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   path: str) -> None:
    """Redis refuses writes (maxmemory) after the first pipeline: the error
    names the queued, uncertain and unsent task ids; the run tracks the queued."""
    calls = 0
    if path == "raw":
        add = publish.Wire.add

        def add_then_refuse(self: publish.Wire, pipe: Any, part: Any, sink: Any = None) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:  # the second chunk of 3
                redis_client.config_set("maxmemory", 1)
            add(self, pipe, part, sink)

        monkeypatch.setattr(publish.Wire, "add", add_then_refuse)
    else:
        monkeypatch.setattr(publish, "wire_for", lambda *a: None)
        amqp = lone_app.amqp
        send = amqp.send_task_message

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
    # On the queue, or in the run's fair-share backlog for it (no worker takes them).
    raws = [*redis_client.lrange("labq", 0, -1),
            *redis_client.lrange(backlog_key("labq", run.id), 0, -1)]
    queued = [json.loads(raw)["headers"]["id"] for raw in raws]
    assert sorted(queued) == sorted(err.queued)


def test_run_submit_publishes_what_send_task_publishes(lone_app: LabqCelery,
                                                       redis_client: redis.Redis) -> None:
    """Run.submit goes through the raw path too: its message is the text
    app.send_task publishes for the same call (delivery tag aside)."""
    app = lone_app
    run = labq.Run("single", app=app, progress=False)
    try:
        redis_client.delete("labq")
        task_id = run.submit(diag.echo, "ä", soft_time_limit=5, time_limit=10)
        body = {RUN_KWARG: run.id, SCRIPT_KWARG: run.script, OWNER_KWARG: run.owner,
                PRIORITY_KWARG: "normal"}
        app.send_task(diag.echo.name, args=["ä"], kwargs=body, task_id=task_id, queue="labq",
                      soft_time_limit=5, time_limit=10)
        # No worker: the run's message waits in its fair-share backlog, as it would be queued.
        (kombu_text,), (raw_text,) = (redis_client.lrange("labq", 0, -1),
                                      redis_client.lrange(backlog_key("labq", run.id), 0, -1))
    finally:
        run.close()
        redis_client.delete("labq")
    (raw_env, raw_body), (kombu_env, _kombu_body) = unwrap(raw_text), unwrap(kombu_text)
    tag = raw_env["properties"]["delivery_tag"]
    assert raw_text.replace(tag.encode(), kombu_env["properties"]["delivery_tag"].encode()) == \
        kombu_text
    assert raw_body[0] == ["ä"] and raw_body[1] == body
    assert [o.status for o in run.outcomes] == [labq.Status.QUEUED]


def test_flower_sees_each_tasks_owner_and_priority(lone_app: LabqCelery,
                                                    redis_client: redis.Redis) -> None:
    """The kwargs repr Flower shows carries the run's owner and priority, for
    plain tasks and device tasks alike (after the device and the run)."""
    run = labq.Run("tagged", app=lone_app, progress=False, owner="ana", priority="high")
    # Any device of the app's own testbed, on whatever queue it names.
    testbed = load_testbed(lone_app.labq_settings.testbed)
    target = next(iter(testbed.devices.values()))
    try:
        run.submit(diag.echo, 1)
        run.submit(device.execute, device=target.name, command="show clock")
        texts = [t for q in {"labq", target.queue or "labq"}
                 for t in redis_client.lrange(backlog_key(q, run.id), 0, -1)]
    finally:
        run.close()
    reprs = [json.loads(t)["headers"]["kwargsrepr"] for t in texts]
    assert len(reprs) == 2
    for shown in reprs:
        assert "'labq_owner': 'ana'" in shown and "'labq_priority': 'high'" in shown, shown
    device_repr = next(r for r in reprs if "'device'" in r)
    assert device_repr.index("'device'") < device_repr.index("'labq_run'") \
        < device_repr.index("'labq_owner'") < device_repr.index("'labq_priority'")
