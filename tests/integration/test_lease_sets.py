"""Several devices in one lease, all or nothing, against a real Redis."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labq.devices.lease import RESERVE_AFTER, Grant, Leases, SetGrant, SetWait, Wait
from labq.keys import held_key, lease_keys

LAB = [f"d{i}" for i in range(8)]


def holders(client: redis.Redis, device: str) -> set[str]:
    return {h.decode() for h in client.zrange(lease_keys(device)[0], 0, -1)}


def one(device: str) -> list[tuple[str, int]]:
    return [(device, 1)]


def test_a_topology_is_leased_whole_or_not_at_all(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    leases.acquire("d1", "single", 1)
    got = leases.acquire_set([one("d0"), one("d1"), one("d2")], "topo")
    assert isinstance(got, SetWait) and got.holders == ["single"]
    # Nothing of it is held while it waits, not even the free d0 and d2.
    assert [holders(redis_client, d) for d in ("d0", "d2")] == [set(), set()]
    assert leases.release("d1", "single")
    got = leases.acquire_set([one("d0"), one("d1"), one("d2")], "topo")
    assert isinstance(got, SetGrant) and got.devices == ("d0", "d1", "d2")
    assert {d.decode() for d in redis_client.smembers(held_key("topo"))} == {"d0", "d1", "d2"}
    assert sorted(leases.release_all("topo")) == ["d0", "d1", "d2"]


def test_two_picks_of_one_pool_never_get_the_same_device(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    pool = [(d, 1) for d in ("d3", "d4")]
    got = leases.acquire_set([pool, pool], "pair")
    assert isinstance(got, SetGrant) and sorted(got.devices) == ["d3", "d4"]
    # A pick and a name on one device: the pick takes the other one.
    leases.release_all("pair")
    got = leases.acquire_set([pool, one("d3")], "mixed")
    assert isinstance(got, SetGrant) and got.devices == ("d4", "d3")
    leases.release_all("mixed")


def test_a_young_set_waiter_holds_nobody_up_and_an_old_one_reserves(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    for d in ("d5", "d6"):
        leases.acquire(d, f"busy-{d}", 1)
    got = leases.acquire_set([one("d5"), one("d6")], "topo")
    assert isinstance(got, SetWait)
    leases.release("d5", "busy-d5")
    # Young, it holds nobody up: a later single task takes the free d5.
    time.sleep(0.002)
    assert isinstance(leases.acquire("d5", "early", 1), Grant)
    leases.release("d5", "early")
    # Once it has waited RESERVE_AFTER, it is in d5's line, ahead of later tasks.
    since = got.waiting_since - RESERVE_AFTER
    assert isinstance(leases.acquire_set([one("d5"), one("d6")], "topo", since=since), SetWait)
    assert [w.holder for w in leases.waiters("d5")] == ["topo"]
    assert isinstance(leases.acquire("d5", "later", 1), Wait)
    assert holders(redis_client, "d5") == set()
    leases.release("d6", "busy-d6")
    got = leases.acquire_set([one("d5"), one("d6")], "topo", since=since)
    assert isinstance(got, SetGrant)
    leases.release_all("topo")
    leases.release_all("later")


def test_a_pick_waits_in_every_line_and_takes_the_first_freed(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    pool = [(d, 1) for d in ("d0", "d1", "d2")]
    for d, _ in pool:
        leases.acquire(d, f"busy-{d}", 1)
    since = time.time() - RESERVE_AFTER  # old enough to be in every line
    assert isinstance(leases.acquire_set([pool], "pick", since=since), SetWait)
    assert all([w.holder for w in leases.waiters(d)] == ["pick"] for d, _ in pool)
    leases.release("d1", "busy-d1")
    got = leases.acquire_set([pool], "pick", since=since)
    assert isinstance(got, SetGrant) and got.devices == ("d1",)
    # It has left the other lines.
    assert leases.waiters("d0") == [] and leases.waiters("d2") == []
    for d in ("d0", "d2"):
        leases.release(d, f"busy-{d}")
    leases.release_all("pick")


@st.composite
def workloads(draw: st.DrawFn) -> list[list[list[tuple[str, int]]]]:
    """Tasks of one to three slots over a small lab: names in any order,
    and pools, so that orders conflict (one takes (a, b), another (b, a))."""
    tasks = []
    for _ in range(draw(st.integers(8, 30))):
        kind = draw(st.sampled_from(["one", "pair", "three", "pick", "pick+name"]))
        names = draw(st.permutations(LAB))
        if kind == "one":
            tasks.append([one(names[0])])
        elif kind == "pair":
            tasks.append([one(names[0]), one(names[1])])
        elif kind == "three":
            tasks.append([one(n) for n in names[:3]])
        elif kind == "pick":
            tasks.append([[(n, 1) for n in names[:3]]])
        else:
            tasks.append([[(n, 1) for n in names[:4]], one(names[4])])
    return tasks


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workloads(), st.integers(0, 2**32))
def test_any_mix_of_sets_and_singles_ends_with_every_task_served(
        redis_client: redis.Redis, tasks: list[list[list[tuple[str, int]]]], seed: int) -> None:
    """Tasks poll in random order and hold what they get for a few steps;
    nothing is ever held twice, nothing is held while waiting, and every
    task is served within a bounded number of steps (no deadlock)."""
    redis_client.flushdb()
    rnd = random.Random(seed)  # not hypothesis's: the draws depend on Redis's answers
    leases = Leases(redis_client)
    pending = {f"t{i}": slots for i, slots in enumerate(tasks)}
    since: dict[str, float] = {}
    running: dict[str, tuple[int, tuple[str, ...]]] = {}
    served = 0
    for step in range(40 * len(tasks)):
        for name in rnd.sample(sorted(pending), len(pending)):
            got = leases.acquire_set(pending[name], name, since=since.get(name))
            held = {d.decode() for d in redis_client.smembers(held_key(name))}
            if isinstance(got, SetGrant):
                assert held == set(got.devices) and len(got.devices) == len(pending[name])
                for device, slot in zip(got.devices, pending[name], strict=True):
                    assert device in {d for d, _ in slot}
                running[name] = (step + rnd.randint(1, 3), got.devices)
                del pending[name]
            else:
                assert held == set()  # all or nothing
                # Half of them have waited long enough to reserve their devices.
                old = RESERVE_AFTER if int(name[1:]) % 2 else 0.0
                since.setdefault(name, got.waiting_since - old)
        use = Counter(d for _, devices in running.values() for d in devices)
        assert max(use.values(), default=0) <= 1
        for name, (until, _) in list(running.items()):
            if until <= step:
                leases.release_all(name)
                del running[name]
                served += 1
        if not pending and not running:
            break
    assert not pending, f"never served: {sorted(pending)}"
    assert served == len(tasks)


def test_a_bad_slot_is_refused_before_redis(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    with pytest.raises(Exception, match="has no candidate"):
        leases.acquire_set([[]], "x")
    with pytest.raises(Exception, match="max_sessions of 'd1' must be >= 1, got 0"):
        leases.acquire_set([[("d1", 0)]], "x")
