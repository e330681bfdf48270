"""Parked waiters against a real Redis: their retry messages wait in Redis and
the lease scripts push them to the front of their queue when a session opens."""

from __future__ import annotations

import time

import redis

from labq.devices.lease import RESERVE_AFTER, Grant, Leases, SetGrant, SetWait, Wait
from labq.keys import PARKED_KEY, PREFIX, parked_key, watch_key

QUEUE = "parking-test-queue"


def queued(client: redis.Redis) -> list[str]:
    """The queue's messages, the next to be taken first (kombu BRPOPs the tail)."""
    return [m.decode() for m in reversed(client.lrange(QUEUE, 0, -1))]


def labq_keys(client: redis.Redis) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=f"{PREFIX}*")}


def park_single(leases: Leases, device: str, holder: str, *, wake_in: float = 10.0) -> bool:
    time.sleep(0.002)  # one waiter per millisecond: lines are ordered by first-wait time
    answer = leases.acquire(device, holder, 1)
    assert isinstance(answer, Wait), answer
    return leases.park(holder, [[(device, 1)]], [], since=answer.waiting_since,
                       wake_in=wake_in, queue_key=QUEUE, message=f"msg-{holder}", single=True)


def test_a_parked_waiter_goes_to_the_front_of_its_queue_once_its_device_frees(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    redis_client.delete(QUEUE)
    assert isinstance(leases.acquire("k1", "holder", 1), Grant)
    assert park_single(leases, "k1", "first")
    assert park_single(leases, "k1", "second")
    redis_client.lpush(QUEUE, "older-message")  # what kombu queued meanwhile
    assert queued(redis_client) == ["older-message"]
    assert leases.release("k1", "holder")
    # Only the first in line is woken, and ahead of what was queued.
    assert queued(redis_client) == ["msg-first", "older-message"]
    assert not redis_client.exists(parked_key("first"))
    assert redis_client.exists(parked_key("second"))
    # The first takes the device, runs and leaves: now the second's turn.
    assert isinstance(leases.acquire("k1", "first", 1), Grant)
    leases.release("k1", "first")
    assert queued(redis_client) == ["msg-second", "msg-first", "older-message"]
    assert isinstance(leases.acquire("k1", "second", 1), Grant)
    leases.release("k1", "second")
    redis_client.delete(QUEUE)
    assert labq_keys(redis_client) == set()


def test_a_park_is_refused_while_a_session_is_open_to_the_waiter(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    redis_client.delete(QUEUE)
    assert isinstance(leases.acquire("k2", "holder", 1), Grant)
    answer = leases.acquire("k2", "late", 1)
    assert isinstance(answer, Wait)
    leases.release("k2", "holder")  # frees between the answer and the park
    assert not leases.park("late", [[("k2", 1)]], [], since=answer.waiting_since, wake_in=5,
                           queue_key=QUEUE, message="msg-late", single=True)
    assert queued(redis_client) == []
    assert not redis_client.exists(parked_key("late"))
    leases.release_all("late")
    assert labq_keys(redis_client) == set()


def test_wake_due_wakes_only_the_waiters_whose_time_has_come(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    redis_client.delete(QUEUE)
    assert isinstance(leases.acquire("k3", "holder", 1), Grant)
    assert park_single(leases, "k3", "soon", wake_in=0.05)
    assert park_single(leases, "k3", "later", wake_in=30)
    time.sleep(0.1)
    assert leases.wake_due() == 1
    assert queued(redis_client) == ["msg-soon"]
    assert redis_client.zrange(PARKED_KEY, 0, -1) == [b"later"]
    assert leases.wake_due() == 0
    leases.release("k3", "holder")  # "soon" is still first in line: nothing to wake
    assert queued(redis_client) == ["msg-soon"]
    for h in ("soon", "later", "holder"):
        leases.release_all(h)
    assert queued(redis_client) == ["msg-later", "msg-soon"]  # later's turn came
    redis_client.delete(QUEUE)
    assert labq_keys(redis_client) == set()


def test_a_parked_pick_is_woken_by_any_candidate_or_a_free_match_elsewhere(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    redis_client.delete(QUEUE)
    here = [(d, 1) for d in ("ka0", "ka1", "ka2")]
    there = [(d, 1) for d in ("kb0", "kb1")]
    for d, _ in [*here, *there]:
        assert isinstance(leases.acquire(d, f"busy-{d}", 1), Grant)
    for freed, woken_by in (("ka2", "a candidate here"), ("kb1", "a free match elsewhere")):
        answer = leases.acquire_set([here], "pick")
        assert isinstance(answer, SetWait)
        assert leases.park("pick", [here], [[there]], since=answer.waiting_since, wake_in=10,
                           queue_key=QUEUE, message="msg-pick")
        assert {m.decode() for m in redis_client.zrange(watch_key("ka0"), 0, -1)} == {"pick"}
        assert queued(redis_client) == []
        leases.release(freed, f"busy-{freed}")
        assert queued(redis_client) == ["msg-pick"], woken_by
        # Woken, it watches nothing any more.
        assert not any(redis_client.exists(watch_key(d)) for d, _ in [*here, *there])
        redis_client.delete(QUEUE)
        assert isinstance(leases.acquire(freed, f"busy-{freed}", 1), Grant)
    leases.release_all("pick")
    for d, _ in [*here, *there]:
        leases.release(d, f"busy-{d}")
    assert labq_keys(redis_client) == set()


def test_an_old_set_waiter_behind_an_older_one_holds_nobody_up_until_it_is_first(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    redis_client.delete(QUEUE)
    for d in ("kx", "ky"):
        assert isinstance(leases.acquire(d, f"busy-{d}", 1), Grant)
    # An older single waiter is first in ky's line.
    old = leases.acquire("ky", "older", 1, since=time.time() - 2 * RESERVE_AFTER)
    assert isinstance(old, Wait)
    since = time.time() - RESERVE_AFTER - 1  # old enough to reserve
    topo = leases.acquire_set([[("kx", 1)], [("ky", 1)]], "topo", since=since)
    assert isinstance(topo, SetWait)
    # Behind "older" on ky it could not run anyway: kx stays open to others.
    assert leases.waiters("kx") == []
    assert leases.park("topo", [[("kx", 1)], [("ky", 1)]], [], since=topo.waiting_since,
                       wake_in=10, queue_key=QUEUE, message="msg-topo")
    # Once "older" has gone, the parked topology reserves both in place,
    # without running: a later task no longer takes kx.
    leases.release_all("older")
    assert [w.holder for w in leases.waiters("kx")] == ["topo"]
    assert [w.holder for w in leases.waiters("ky")] == ["topo"]
    assert queued(redis_client) == []
    leases.release("kx", "busy-kx")
    assert isinstance(leases.acquire("kx", "later", 1), Wait)
    leases.release("ky", "busy-ky")  # both free: now it is woken to take them
    assert queued(redis_client) == ["msg-topo"]
    assert isinstance(leases.acquire_set([[("kx", 1)], [("ky", 1)]], "topo", since=since),
                      SetGrant)
    for h in ("topo", "later"):
        leases.release_all(h)
    redis_client.delete(QUEUE)
    assert labq_keys(redis_client) == set()
