"""People's reservations (labq.devices.reservations) against a real Redis.

A reservation is a lease under the holder ``resv:<id>``: these tests check
what it changes in the lease scripts (it takes every session, a person in
line holds up the tasks behind, Picks take other devices), its token, its
expiry, ``hold_on_failure``'s conversion, and a property test of many
tasks and people in conflicting orders.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labq.devices.lease import Grant, Leases, SetGrant, SetWait, Wait
from labq.devices.reservations import Reservations, recall, remember
from labq.errors import ReservationError
from labq.keys import RESERVATION_DEVICES_KEY, RESERVATIONS_KEY, held_key, lease_keys


def reserve(store: Reservations, *names: str, seconds: float = 60.0, owner: str = "ana",
            wait: bool = False) -> object:
    return store.reserve([[n] for n in names], owner=owner, note="debugging", seconds=seconds,
                         wait=wait)


def test_a_reserved_device_takes_every_session_and_a_pick_goes_elsewhere(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    mine = store.reserve([["r7"]], owner="ana", note="BGP flap", seconds=60, wait=False)
    assert mine.devices == ("r7",) and mine.owner == "ana" and mine.token
    assert mine.expires_at == pytest.approx(time.time() + 60, abs=5)
    # max_sessions 4: still nobody else gets it.
    assert isinstance(leases.acquire("r7", "task-1", 4), Wait)
    pick = leases.acquire_set([[("r7", 4), ("r8", 4)]], "task-2")
    assert isinstance(pick, SetGrant) and pick.devices == ("r8",)
    assert leases.free({"r7": 4, "r8": 4}) == {"r8"}
    # Listed, with who, why and until when; never the token.
    (listed,) = store.all()
    assert (listed.id, listed.owner, listed.note, listed.devices) == (mine.id, "ana", "BGP flap",
                                                                      ("r7",))
    assert listed.token == ""
    holder = leases.holders("r7")[0]
    assert holder.reservation == mine.id and holder.owner == "ana"


def test_only_the_token_releases_unless_forced_and_force_is_logged(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    mine = store.reserve([["r1"]], owner="ana", note="n", seconds=60, wait=False)
    for bad in (None, "not-the-token"):
        with pytest.raises(ReservationError, match="'r1' is reserved by 'ana'") as err:
            store.release("r1", token=bad)
        assert "--force" in str(err.value)
        if bad:
            assert repr(bad) in str(err.value)
    assert store.on("r1") is not None  # nothing changed
    with pytest.raises(ReservationError, match="'r2' holds no reservation"):
        store.release("r2", token=mine.token)
    gone = store.release("r1", token=mine.token)
    assert gone.id == mine.id and store.on("r1") is None and store.force_log() == []
    assert isinstance(leases.acquire("r1", "task", 1), Grant)
    leases.release("r1", "task")

    other = store.reserve([["r1"]], owner="bob", note="lab work", seconds=60, wait=False)
    store.release("r1", force=True, by="ana@host")
    (entry,) = store.force_log()
    assert entry["by"] == "ana@host" and entry["owner"] == "bob" and entry["id"] == other.id
    assert float(entry["at"]) == pytest.approx(time.time(), abs=5)


def test_no_wait_fails_at_once_and_leaves_no_trace(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    assert isinstance(leases.acquire("r1", "task", 2), Grant)
    with pytest.raises(ReservationError, match=r"r1: busy \(held by task task\)"):
        reserve(store, "r1")
    assert leases.waiters("r1") == []
    # A second session stays open to tasks: the person took nothing.
    assert isinstance(leases.acquire("r1", "task-2", 2), Grant)


def test_a_person_in_line_holds_up_the_tasks_behind(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    assert isinstance(leases.acquire("r1", "first", 2), Grant)
    got: list[object] = []
    stop = threading.Event()

    def give_up_on_stop(answer: object) -> None:
        if stop.is_set():  # the test failed: leave the line, touch nothing more
            raise KeyboardInterrupt

    def person() -> None:
        try:
            got.append(store.reserve([["r1"]], owner="ana", note="", seconds=30, wait=True,
                                     poll=0.05, on_wait=give_up_on_stop))
        except KeyboardInterrupt:
            pass

    t = threading.Thread(target=person)
    t.start()
    try:
        end = time.monotonic() + 5
        while not leases.waiters("r1"):
            assert time.monotonic() < end
            time.sleep(0.02)
        # First-wait times are whole ms, and a tie goes by name ('later' before
        # 'resv:...'): come a few ms after the person, as a later task would.
        time.sleep(0.005)
        # The second session is free, but the person came first: the task waits.
        later = leases.acquire("r1", "later", 2)
        assert isinstance(later, Wait) and later.position == 2
        leases.release("r1", "first")
        t.join(timeout=5)
        assert got and store.on("r1") is not None
        assert isinstance(leases.acquire("r1", "later", 2), Wait)
    finally:
        stop.set()
        t.join(timeout=5)


def test_a_reservation_ends_at_its_time_and_frees_the_device(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    mine = store.reserve([["r1"]], owner="ana", note="", seconds=0.4, wait=False)
    answer = leases.acquire("r1", "task", 1)
    assert isinstance(answer, Wait)
    # The task gives its slot back and parks; the end of the reservation wakes it,
    # although the lease's own keys expire by themselves before the sweep.
    assert leases.park("task", [[("r1", 1)]], [], since=answer.waiting_since, wake_in=30,
                       queue_key="q", message="retry", single=True)
    time.sleep(0.5)
    assert redis_client.lrange("q", 0, -1) == []
    assert store.expire() == [mine.id]
    assert redis_client.lrange("q", 0, -1) == [b"retry"]
    assert redis_client.zcard(RESERVATIONS_KEY) == 0
    assert redis_client.hlen(RESERVATION_DEVICES_KEY) == 0  # the sweep's index is clean
    assert not redis_client.exists(held_key(mine.holder))
    assert isinstance(leases.acquire("r1", "task", 1), Grant)
    assert store.all() == []


def test_extend_needs_the_token_and_moves_the_end(redis_client: redis.Redis) -> None:
    store = Reservations(redis_client)
    mine = store.reserve([["r1"], ["r2"]], owner="ana", note="", seconds=60, wait=False)
    with pytest.raises(ReservationError, match="only its token extends it"):
        store.extend("r2", 600, token="wrong")
    longer = store.extend("r2", 600, token=mine.token)
    assert longer.expires_at == pytest.approx(mine.expires_at + 600, abs=2)
    ttl = redis_client.pttl(lease_keys("r1")[0]) / 1000
    assert ttl == pytest.approx(660, abs=5)
    (listed,) = store.all()
    assert listed.expires_at == pytest.approx(longer.expires_at, abs=1)


def test_labels_and_count_reserve_all_or_nothing(redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    spines = ["s1", "s2", "s3"]
    assert isinstance(leases.acquire("s2", "task", 1), Grant)
    two = store.reserve([spines, spines], owner="ana", note="", seconds=60, wait=False)
    assert sorted(two.devices) == ["s1", "s3"]
    with pytest.raises(ReservationError, match=f"held by ana's reservation {two.id}"):
        store.reserve([spines], owner="bob", note="", seconds=60, wait=False)
    assert [r.id for r in store.all()] == [two.id]


def test_hold_turns_a_tasks_leases_into_a_reservation_in_one_step(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    g = leases.acquire_set([[("d1", 2)], [("d2", 1)]], "task-9")
    assert isinstance(g, SetGrant)
    held = store.hold("task-9", 30, owner="ana", note="held after task-9 failed", task="task-9")
    assert held is not None and held.devices == ("d1", "d2") and held.token
    assert not redis_client.exists(held_key("task-9"))
    assert [h.holder for h in leases.holders("d1")] == [held.holder]
    assert isinstance(leases.acquire("d1", "next", 2), Wait)  # its other session too
    (listed,) = store.all()
    assert listed.task == "task-9" and listed.note == "held after task-9 failed"
    assert store.hold("task-9", 30, owner="ana", note="", task="task-9") is None
    store.release("d2", token=held.token)
    assert isinstance(leases.acquire("d1", "next", 2), Grant)


def test_the_token_file_keeps_the_newest_token_per_device(tmp_path: object) -> None:
    from pathlib import Path

    from labq.devices.reservations import Reservation

    state = Path(str(tmp_path))
    old = Reservation("a1", "ana", "", ("r1",), 0, time.time() + 10, "tok-old")
    new = Reservation("b2", "ana", "", ("r1", "r2"), 0, time.time() + 20, "tok-new")
    remember(state, old)
    path = remember(state, new)
    assert path.stat().st_mode & 0o777 == 0o600
    assert recall(state, "r1") == "tok-new" and recall(state, "r2") == "tok-new"
    assert recall(state, "r3") is None


DEVICES = [f"p{i}" for i in range(5)]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_property_reserved_devices_are_never_granted_and_every_task_is_served(
        redis_client: redis.Redis, data: st.DataObject) -> None:
    """Tasks of two runs (names and Picks, in conflicting orders) and people
    (names, and any-of sets) come and go in random order. A device a person
    holds is never granted to a task, nothing exceeds max_sessions, and once
    every person is gone every task is served."""
    redis_client.flushall()
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    maxes = {d: data.draw(st.integers(1, 3), label=f"max {d}") for d in DEVICES}
    order = {run: data.draw(st.permutations(DEVICES), label=f"order {run}") for run in "ab"}
    tasks = []
    for run in "ab":
        for i in range(data.draw(st.integers(4, 10), label=f"tasks {run}")):
            if data.draw(st.booleans(), label="pick"):
                tasks.append((f"{run}{i}", [[(d, maxes[d]) for d in order[run][:3]]]))
            else:
                d = order[run][i % len(DEVICES)]
                tasks.append((f"{run}{i}", [[(d, maxes[d])]]))
    rnd = random.Random(data.draw(st.integers(0, 10**6), label="seed"))
    people = [[rnd.choice(DEVICES)] for _ in range(data.draw(st.integers(1, 3), label="people"))]
    people.append(rnd.sample(DEVICES, 2))
    running: dict[str, tuple[str, ...]] = {}
    reserved: dict[str, tuple[str, ...]] = {}
    tokens: dict[str, str] = {}
    waiting = list(tasks)
    done: set[str] = set()
    steps = 0
    while waiting or running or people or reserved:
        steps += 1
        assert steps < 2000, "no progress: a task or a person is never served"
        action = rnd.random()
        if people and action < 0.2:
            want = people.pop(0)
            try:
                r = store.reserve([want], owner="p", note="",
                                  seconds=60, wait=False)
            except ReservationError:
                people.append(want)  # busy: try again later
            else:
                reserved[r.id], tokens[r.id] = r.devices, r.token
        elif reserved and action < 0.3:
            rid = rnd.choice(sorted(reserved))
            store.release(reserved.pop(rid)[0], token=tokens[rid])
        elif running and action < 0.6:
            holder = rnd.choice(sorted(running))
            running.pop(holder)
            leases.release_all(holder)
            done.add(holder)
        elif waiting:
            holder, slots = waiting[rnd.randrange(len(waiting))]
            answer = (leases.acquire(slots[0][0][0], holder, slots[0][0][1])
                      if len(slots[0]) == 1 else leases.acquire_set(slots, holder))
            if isinstance(answer, (Grant, SetGrant)):
                got = (answer.device,) if isinstance(answer, Grant) else answer.devices
                person = {d for devs in reserved.values() for d in devs}
                assert not person & set(got), f"{holder} got {got} while a person holds them"
                running[holder] = got
                waiting.remove((holder, slots))
            else:
                assert isinstance(answer, (Wait, SetWait))
        elif running:
            holder = sorted(running)[0]
            running.pop(holder)
            leases.release_all(holder)
            done.add(holder)
        elif reserved:
            rid = sorted(reserved)[0]
            store.release(reserved.pop(rid)[0], token=tokens[rid])
        for d in DEVICES:
            holders = [h.holder for h in leases.holders(d)]
            people_on = [h for h in holders if h.startswith("resv:")]
            assert len(holders) <= maxes[d], (d, holders)
            assert not people_on or holders == people_on[:1], (d, holders)
    assert done == {h for h, _ in tasks}


def test_giving_up_while_waiting_leaves_the_line(redis_client: redis.Redis) -> None:
    """Ctrl-C while ``labq reserve`` waits: the person leaves every line, and
    the task behind them is no longer held up."""
    leases = Leases(redis_client)
    store = Reservations(redis_client, leases)
    assert isinstance(leases.acquire("r1", "first", 2), Grant)

    def interrupt(answer: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.reserve([["r1"]], owner="ana", note="", seconds=60, on_wait=interrupt)
    assert [w.holder for w in leases.waiters("r1")] == []
    assert isinstance(leases.acquire("r1", "later", 2), Grant)
