"""Device leases against a real, password-protected Redis."""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from labq.devices.lease import Grant, Leases, Wait
from labq.devices.renewal import Renewer
from labq.embedded.ports import free_port
from labq.embedded.redis_server import RedisServer
from labq.errors import BrokerUnavailable, DeviceBusy, LeaseError
from labq.keys import DEVICES_KEY, held_key, lease_keys, waiting_key


def grant(result: Grant | Wait) -> Grant:
    assert isinstance(result, Grant), result
    return result


def wait(result: Grant | Wait) -> Wait:
    assert isinstance(result, Wait), result
    return result


def test_grant_wait_release(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    g = grant(leases.acquire("r1", "a", 1, task="execute", worker="w1"))
    assert (g.device, g.holder) == ("r1", "a")
    assert g.expires_at == pytest.approx(time.time() + 15, abs=5)
    w = wait(leases.acquire("r1", "b", 1))
    assert (w.position, w.holders, w.device) == (1, ["a"], "r1")
    assert leases.renew("r1", "a")
    assert not leases.renew("r1", "b")
    assert leases.release("r1", "a")
    assert not leases.release("r1", "a")
    grant(leases.acquire("r1", "b", 1))
    assert [h.holder for h in leases.holders("r1")] == ["b"]
    assert leases.waiters("r1") == []


def test_holder_that_holds_is_renewed(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    first = grant(leases.acquire("r1", "a", 1, ttl=5))
    again = grant(leases.acquire("r1", "a", 1, ttl=20))
    assert again.expires_at > first.expires_at + 10
    assert len(leases.holders("r1")) == 1


def test_max_sessions_two(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    grant(leases.acquire("r1", "a", 2))
    grant(leases.acquire("r1", "b", 2))
    w = wait(leases.acquire("r1", "c", 2))
    assert (w.position, sorted(w.holders)) == (1, ["a", "b"])


def test_waiters_are_served_in_order_of_first_wait(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    grant(leases.acquire("r1", "h", 1))
    for w in ("w1", "w2", "w3"):
        leases.acquire("r1", w, 1)
        time.sleep(0.003)  # distinct first-wait milliseconds
    assert [(x.holder, x.position) for x in leases.waiters("r1")] == [
        ("w1", 1), ("w2", 2), ("w3", 3)]
    leases.release("r1", "h")
    # polling order does not matter, the first waiter gets the free slot
    assert wait(leases.acquire("r1", "w3", 1)).position == 3
    assert wait(leases.acquire("r1", "w2", 1)).position == 2
    grant(leases.acquire("r1", "w1", 1))
    assert wait(leases.acquire("r1", "w3", 1)).position == 2
    leases.release("r1", "w1")
    assert wait(leases.acquire("r1", "w3", 1)).position == 2
    grant(leases.acquire("r1", "w2", 1))
    leases.release("r1", "w2")
    grant(leases.acquire("r1", "w3", 1))


def test_newcomer_does_not_jump_the_line(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    grant(leases.acquire("r1", "h", 1))
    wait(leases.acquire("r1", "w1", 1))
    time.sleep(0.003)  # same millisecond would order by name, and "new" < "w1"
    leases.release("r1", "h")
    w = wait(leases.acquire("r1", "new", 1))
    assert (w.position, w.holders) == (2, [])  # the free slot is w1's
    assert "nobody" in str(w.busy())
    grant(leases.acquire("r1", "w1", 1))


def test_expired_lease_cannot_be_renewed_even_before_it_is_purged(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    grant(leases.acquire("r1", "short", 2, ttl=0.2))
    grant(leases.acquire("r1", "long", 2))  # keeps the lease key alive
    time.sleep(0.3)
    assert not leases.renew("r1", "short")
    assert [h.holder for h in leases.holders("r1")] == ["long"]


def test_lease_expires_by_ttl(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, ttl=0.3)
    grant(leases.acquire("r1", "a", 1))
    wait(leases.acquire("r1", "b", 1))
    time.sleep(0.4)
    grant(leases.acquire("r1", "b", 1))
    assert not leases.renew("r1", "a")
    assert not leases.release("r1", "a")


def test_stale_waiter_is_dropped_and_may_come_back_with_its_place(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, waiter_ttl=0.3)
    grant(leases.acquire("r1", "h", 1))
    w1 = wait(leases.acquire("r1", "w1", 1))
    time.sleep(0.003)
    assert wait(leases.acquire("r1", "w2", 1)).position == 2
    time.sleep(0.2)
    wait(leases.acquire("r1", "w2", 1))  # w2 keeps polling, w1 does not
    time.sleep(0.2)
    assert [x.holder for x in leases.waiters("r1")] == ["w2"]
    assert wait(leases.acquire("r1", "w2", 1)).position == 1
    back = wait(leases.acquire("r1", "w1", 1, since=w1.waiting_since))
    assert back.position == 1
    assert back.waiting_since == pytest.approx(w1.waiting_since)
    assert back.waited >= 0.4


def test_release_all_and_abandon_wait(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    grant(leases.acquire("d1", "x", 1))
    grant(leases.acquire("d2", "x", 1))
    grant(leases.acquire("d3", "y", 1))
    wait(leases.acquire("d3", "x", 1))
    wait(leases.acquire("d1", "z", 1))
    assert leases.release_all("x") == ["d1", "d2"]
    assert leases.waiters("d3") == []
    assert [h.holder for h in leases.holders("d3")] == ["y"]
    assert not redis_client.exists("labq:held:x", "labq:waiting:x")
    assert leases.release_all("x") == []
    assert leases.abandon_wait("d1", "z")
    assert not leases.abandon_wait("d1", "z")


def test_snapshot_lists_holders_and_waiters(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, ttl=10)
    grant(leases.acquire("r2", "t1", 1, task="execute", worker="w@host"))
    wait(leases.acquire("r2", "t2", 1))
    grant(leases.acquire("r1", "t3", 2))
    snap = leases.snapshot()
    assert [d.device for d in snap] == ["r1", "r2"]
    (h,) = snap[1].holders
    assert (h.holder, h.task, h.worker) == ("t1", "execute", "w@host")
    assert h.expires_at - h.since == pytest.approx(10, abs=0.1)
    assert [(w.holder, w.position) for w in snap[1].waiters] == [("t2", 1)]
    assert 0 < redis_client.pttl("labq:lease:r2") <= 10_000


def test_keys_vanish_when_nobody_comes_back(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, ttl=0.3, waiter_ttl=0.3)
    grant(leases.acquire("r1", "a", 1))
    wait(leases.acquire("r1", "b", 1))
    time.sleep(0.5)
    assert redis_client.keys("labq:*") == [b"labq:devices"]
    assert leases.snapshot() == []
    assert redis_client.keys("labq:*") == []


def test_bad_requests_are_refused(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    for device, holder, n in (("r1", "a", 0), ("r1:info", "a", 1), ("r1", "", 1)):
        with pytest.raises(LeaseError):
            leases.acquire(device, holder, n)
    with pytest.raises(LeaseError):
        Leases(redis_client, ttl=0)


def test_redis_down_is_broker_unavailable() -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port(), password="hunter2-secret",
                         socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(BrokerUnavailable) as info:
        Leases(client).acquire("r1", "a", 1)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert "redis://:****@127.0.0.1:" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_wait_busy_error() -> None:
    w = Wait(position=2, waiting_since=1.0, holders=["t1"], device="r1", waited=61.5)
    err = w.busy()
    assert isinstance(err, DeviceBusy)
    assert str(err) == "device 'r1' still busy after waiting 61.5 s; held by t1"


def test_renewer_keeps_a_short_lease_alive_and_stops_on_exit(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, ttl=0.3)
    g = grant(leases.acquire("r1", "a", 1))
    with Renewer(leases, g) as renewer:
        time.sleep(1.0)
        wait(leases.acquire("r1", "b", 1))
    assert not renewer.lost
    time.sleep(0.4)
    grant(leases.acquire("r1", "b", 1))


def test_renewer_records_a_lost_lease(redis_client: redis.Redis,
                                      caplog: pytest.LogCaptureFixture) -> None:
    leases = Leases(redis_client, ttl=0.3)
    g = grant(leases.acquire("r1", "a", 1))
    with caplog.at_level(logging.WARNING, logger="labq.devices.renewal"), Renewer(leases, g) as renewer:
        leases.release("r1", "a")
        time.sleep(0.3)
    assert renewer.lost
    assert "was lost" in caplog.text


# --- concurrency property: 16 processes, 3 devices --------------------------------

DEVICES = {"dev-a": 1, "dev-b": 2, "dev-c": 1}
TURNS = 8


def _hammer(url: str, index: int) -> None:
    client = redis.Redis.from_url(url)
    leases = Leases(client, ttl=5, waiter_ttl=2)
    rnd = random.Random(index)
    me = f"p{index}"
    turns = violations = lost = 0
    peak: dict[str, int] = {}
    deadline = time.monotonic() + 20
    while turns < TURNS and time.monotonic() < deadline:
        device = rnd.choice(sorted(DEVICES))
        limit = DEVICES[device]
        while time.monotonic() < deadline:
            if isinstance(leases.acquire(device, me, limit, task=me), Grant):
                break
            time.sleep(rnd.uniform(0.001, 0.004))
        else:
            break
        # inside the lease: nobody else may push the counter over the limit
        users = int(client.incr(f"test:users:{device}"))
        peak[device] = max(peak.get(device, 0), users)
        violations += users > limit
        time.sleep(rnd.uniform(0.002, 0.010))
        lost += not leases.renew(device, me)
        time.sleep(rnd.uniform(0.0, 0.004))
        client.decr(f"test:users:{device}")
        lost += not leases.release(device, me)
        turns += 1
    report = {"index": index, "turns": turns, "violations": violations, "lost": lost,
              "peak": peak}
    client.rpush("test:reports", json.dumps(report))


def test_sixteen_processes_never_exceed_max_sessions(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    # spawn, not fork: earlier tests leave threads in this process (event
    # receivers, pools), and a fork taken while one holds a lock can hang.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(redis_server.url, i)) for i in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=40)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    reports = [json.loads(r) for r in redis_client.lrange("test:reports", 0, -1)]
    assert len(reports) == 16
    assert sum(r["violations"] for r in reports) == 0
    assert sum(r["lost"] for r in reports) == 0
    assert all(r["turns"] == TURNS for r in reports), reports
    peaks = {d: max(r["peak"].get(d, 0) for r in reports) for d in DEVICES}
    assert peaks == DEVICES  # max_sessions 2 really admitted two at once
    assert Leases(redis_client).snapshot() == []


def test_acquire_and_release_ride_on_another_clients_pipeline(
        redis_client: redis.Redis, redis_server: RedisServer) -> None:
    leases = Leases(redis_client)
    other = redis.Redis.from_url(redis_server.url)
    redis_client.script_flush()
    # A script this Redis does not have yet: the reply says so; acquire() loads it.
    pipe = other.pipeline(transaction=False)
    leases.queue_acquire(pipe, "r7", "a", 1, task="execute", worker="w1")
    (reply,) = pipe.execute(raise_on_error=False)
    assert isinstance(reply, redis.exceptions.NoScriptError)
    grant(leases.acquire("r7", "a", 1))
    pipe = other.pipeline(transaction=False)
    pipe.ping()
    leases.queue_acquire(pipe, "r7", "b", 1)
    _, reply = pipe.execute()
    w = wait(leases.acquire_answer("r7", "b", reply))
    assert (w.position, w.holders) == (1, ["a"])
    leases.release("r7", "b")  # leaves the line; loads the release script
    pipe = other.pipeline(transaction=False)
    leases.queue_release(pipe, "r7", "a")
    assert pipe.execute() == [1]
    assert leases.holders("r7") == [] and leases.waiters("r7") == []
    other.close()


def test_the_lease_scripts_write_exactly_the_keys_labq_keys_names(
        redis_client: redis.Redis) -> None:
    # The Lua scripts derive key names from the prefix on their own; they
    # must spell them as labq.keys does, for every device and holder name.
    leases = Leases(redis_client)
    devices = ["r1", "spine-2.lab", "dev:with:colons"]
    for device in devices:
        grant(leases.acquire(device, f"holder-{device}", 1, task="t", worker="w"))
        wait(leases.acquire(device, f"waiter-{device}", 1))
    expected = {DEVICES_KEY}
    for device in devices:
        expected |= set(lease_keys(device))
        expected |= {held_key(f"holder-{device}"), waiting_key(f"waiter-{device}")}
    written = {k.decode() for k in redis_client.scan_iter(match="labq:*")}
    assert written == expected
    for device in devices:
        leases.release(device, f"holder-{device}")
        leases.abandon_wait(device, f"waiter-{device}")
    assert {k.decode() for k in redis_client.scan_iter(match="labq:*")} == set()
