"""The worker's kombu transport (labq.redis_client) and event batching
(labq.worker.consumer): less work per task, the same traffic."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from kombu.connection import Connection

import labq
import tasks.diag  # noqa: F401  (registers tasks.diag.echo on every app)
from labq.app import LabqCelery
from labq.devices.lease import Leases
from labq.devices.testbed_yaml import load_testbed
from labq.embedded.redis_server import RedisServer
from labq.errors import TaskCancelled
from labq.keys import RUN_KWARG, cancel_key, fenced_key
from labq.redis_client import TRANSPORT, Channel
from labq.worker.consumer import EVENT_FLUSH_INTERVAL, LabqConsumer
from labq.worker.task_base import LabqTask


def test_a_channel_reuses_one_client_per_pool(redis_server: RedisServer) -> None:
    with Connection(redis_server.url, transport=TRANSPORT) as conn:  # type: ignore[no-untyped-call]
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
            assert a is b
            assert a.ping()
        channel._pool = None  # kombu drops its pool (after a connection error)
        with channel.conn_or_acquire() as c:
            assert c is not a and c.connection_pool is channel.pool
            assert c.ping()


def test_clients_keep_kombus_transport_and_plain_urls(lone_app: LabqCelery) -> None:
    # Flower picks its broker view by the URL scheme: only workers swap transports.
    with lone_app.connection_for_write() as conn:
        assert conn.as_uri().startswith("redis://")
        assert not isinstance(conn.default_channel, Channel)


class _Hub:
    """The two hub calls the consumer makes, recorded."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))


def test_buffered_events_are_flushed_once_per_interval() -> None:
    consumer = LabqConsumer.__new__(LabqConsumer)
    consumer.hub = hub = _Hub()
    flushed: list[int] = []
    consumer._flush_events = lambda: flushed.append(1)  # type: ignore[method-assign]
    for _ in range(5):
        consumer.on_send_event_buffered()
    assert [delay for delay, _cb in hub.later] == [EVENT_FLUSH_INTERVAL]
    hub.later[0][1]()  # the timer fires
    assert flushed == [1]
    consumer.on_send_event_buffered()
    assert len(hub.later) == 2


def test_workers_send_every_task_event_in_order(app: LabqCelery) -> None:
    """Celery's event Receiver (what Flower runs) gets received, started and
    succeeded for every task, in that order, from the batching consumer."""
    from tasks import diag

    flow = ("task-received", "task-started", "task-succeeded")
    seen: dict[str, list[str]] = {}
    listening = threading.Event()

    def record(event: dict[str, Any]) -> None:
        listening.set()  # worker heartbeats arrive every 2 s
        if event["type"] in flow:
            seen.setdefault(event["uuid"], []).append(event["type"])

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": record})
        thread = threading.Thread(target=receiver.capture,
                                  kwargs={"limit": None, "timeout": 60, "wakeup": False})
        thread.start()
        try:
            assert listening.wait(20), "the receiver got no event at all"
            with labq.Run("events", app=app, progress=False) as run:
                ids = run.submit_many(diag.echo, [{"value": i} for i in range(10)])
            deadline = time.monotonic() + 20
            while any(len(seen.get(t, [])) < 3 for t in ids) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            receiver.should_stop = True
            thread.join(5)
    assert {t: seen.get(t) for t in ids} == {t: list(flow) for t in ids}


@pytest.mark.parametrize("cancelled", [True, False], ids=["cancelled", "soft-limit"])
def test_an_interrupt_while_the_start_is_recorded_ends_the_task_by_its_cause(
        lone_app: LabqCelery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        cancelled: bool) -> None:
    # A cancel's SIGUSR1 can land as soon as the start is in Redis, before the
    # task's own code: it must still end cancelled, and a soft limit a soft limit.
    def interrupted(*_: Any) -> None:
        raise SoftTimeLimitExceeded()

    task = lone_app.tasks["tasks.diag.echo"]
    monkeypatch.setattr(LabqTask, "_record_start", interrupted)
    if cancelled:
        redis_client.set(cancel_key("r-start"), "1")
    task.push_request(id="t-start", called_directly=False, hostname="w@h")
    try:
        expected = TaskCancelled if cancelled else SoftTimeLimitExceeded
        with pytest.raises(expected):
            task(value=1, **{RUN_KWARG: "r-start"})
    finally:
        task.pop_request()


@pytest.mark.parametrize("end", ["cancelled", "fenced", "interrupted"])
def test_a_lease_taken_at_the_start_is_freed_however_the_task_ends_before_its_body(
        lone_app: LabqCelery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        end: str) -> None:
    # A first try asks for its lease in its start record's round trip. A task
    # refused there (run cancelled, task fenced), or interrupted before its
    # body, must not keep the lease until its TTL: the release rides with the
    # stored end, or runs in the tracer's cleanup when nothing is stored.
    import labq.worker.task_base
    import tasks.device

    task = lone_app.tasks[tasks.device.execute.name]
    backend = lone_app.backend
    device = next(iter(load_testbed(lone_app.labq_settings.testbed).devices))
    if end == "cancelled":
        redis_client.set(cancel_key("r-lease"), "1")
    elif end == "fenced":
        redis_client.hset(fenced_key("r-lease"), "t-lease", "1")
    else:
        def interrupted() -> None:
            raise SoftTimeLimitExceeded()
        monkeypatch.setattr(labq.worker.task_base, "_install_log_handler", interrupted)
    leases = Leases(redis_client)
    leases.acquire(device, "warm-up", 1)  # loads the script, so the ride is taken
    leases.release(device, "warm-up")
    task.push_request(id="t-lease", called_directly=False, hostname="w@h", retries=0,
                      delivery_info={"redelivered": False}, kwargs={RUN_KWARG: "r-lease"})
    expected = {"cancelled": TaskCancelled, "fenced": Ignore,
                "interrupted": SoftTimeLimitExceeded}[end]
    try:
        with pytest.raises(expected) as raised:
            task(device=device, command="show version", **{RUN_KWARG: "r-lease"})
        rider = task.request.labq_lease_at_start
        assert rider.answer is not None  # it did ask, in the start's round trip
        assert [h.holder for h in leases.holders(device)] == ["t-lease"]
        # What Celery's tracer does next: store the end (not for an Ignore), clean up.
        if end != "fenced":
            backend.mark_as_failure("t-lease", raised.value, request=task.request)
            assert leases.holders(device) == []  # released with the stored end
        backend.process_cleanup()
    finally:
        task.pop_request()
    assert leases.holders(device) == [] and leases.waiters(device) == []
