"""Device health in the lease scripts (labq.devices.health,
labq.devices.lease_scripts), against a real Redis: a blocking state refuses
new leases with DeviceUnavailable, lets current holders finish, lets people
reserve, makes Picks skip the device, and wakes parked waiters to fail."""

from __future__ import annotations

import time

import pytest
import redis

from labq.devices.health import Health, HealthBook
from labq.devices.lease import Grant, Leases, SetGrant, Wait
from labq.devices.reservations import Reservations
from labq.errors import ConfigError, DeviceUnavailable
from labq.keys import parked_key


def test_a_device_never_checked_is_unknown_and_takes_work(redis_client: redis.Redis) -> None:
    book = HealthBook(redis_client)
    (record,) = book.get(["r1"]).values()
    assert record.state is Health.UNKNOWN and not record.state.blocks
    assert isinstance(Leases(redis_client).acquire("r1", "t1", 1), Grant)
    with pytest.raises(ConfigError, match=r"'poorly'.*good, unknown, bad, maintenance, retired"):
        book.set("r1", "poorly", reason="x", by="ana")


@pytest.mark.parametrize("state", [Health.BAD, Health.MAINTENANCE, Health.RETIRED])
def test_a_blocking_state_refuses_new_leases_and_names_itself(
        redis_client: redis.Redis, state: Health) -> None:
    leases, book = Leases(redis_client), HealthBook(redis_client)
    book.set("r2", state, reason="line card 3 dead", by="ana")
    with pytest.raises(DeviceUnavailable) as err:
        leases.acquire("r2", "t1", 2)
    message = str(err.value)
    assert "'r2'" in message and state.value in message and "line card 3 dead" in message
    assert "by ana" in message and " UTC" in message
    assert (err.value.device, err.value.state, err.value.by) == ("r2", state.value, "ana")
    assert leases.waiters("r2") == []  # it joined no line
    # A person may still take it; a resume gives it back to tasks.
    held = Reservations(redis_client, leases).reserve([["r2"]], owner="bob", note="debug",
                                                      seconds=60, wait=False)
    assert held.devices == ("r2",)
    Reservations(redis_client, leases).release("r2", token=held.token)
    book.set("r2", Health.GOOD, reason="fixed", by="ana")
    assert isinstance(leases.acquire("r2", "t1", 2), Grant)
    history = book.history("r2")
    assert [r.state for r in history] == [Health.GOOD, state]


def test_holders_finish_and_waiters_in_line_are_refused(redis_client: redis.Redis) -> None:
    leases, book = Leases(redis_client), HealthBook(redis_client)
    assert isinstance(leases.acquire("r3", "holder", 1), Grant)
    assert isinstance(leases.acquire("r3", "waiter", 1), Wait)
    book.set("r3", Health.MAINTENANCE, reason="RMA", by="ana")
    assert leases.renew("r3", "holder")  # the holder keeps its session
    assert isinstance(leases.acquire("r3", "holder", 1), Grant)  # and may ask again
    with pytest.raises(DeviceUnavailable, match="maintenance"):
        leases.acquire("r3", "waiter", 1)
    leases.release("r3", "holder")
    with pytest.raises(DeviceUnavailable):
        leases.acquire("r3", "newcomer", 1)


def test_picks_skip_a_blocked_device_and_fail_when_a_role_has_none_left(
        redis_client: redis.Redis) -> None:
    leases, book = Leases(redis_client), HealthBook(redis_client)
    book.set("p1", Health.BAD, reason="no prompt", by="check-1")
    got = leases.acquire_set([[("p1", 1), ("p2", 1)]], "t1")
    assert isinstance(got, SetGrant) and got.devices == ("p2",)
    assert leases.free({"p1": 1, "p3": 1}) == {"p3"}
    book.set("p3", Health.RETIRED, reason="gone", by="ana")
    with pytest.raises(DeviceUnavailable, match=r"'p[13]'"):
        leases.acquire_set([[("p1", 1), ("p3", 1)], [("p4", 1)]], "t2")
    assert all(not leases.waiters(d) for d in ("p1", "p3", "p4"))


def test_a_parked_waiter_is_woken_to_fail_when_its_device_is_blocked(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client)
    assert isinstance(leases.acquire("r4", "holder", 1), Grant)
    assert isinstance(leases.acquire("r4", "waiter", 1), Wait)
    assert leases.park("waiter", [[("r4", 1)]], [], since=time.time(), wake_in=300,
                       queue_key="q-r4", message="retry-of-waiter", single=True)
    assert redis_client.exists(parked_key("waiter"))
    woken = leases.set_health("r4", "maintenance", '{"state": "maintenance"}')
    assert woken == ["waiter"]
    assert redis_client.lrange("q-r4", 0, -1) == [b"retry-of-waiter"]  # it runs, and fails
    assert not redis_client.exists(parked_key("waiter"))
    with pytest.raises(DeviceUnavailable):
        leases.acquire("r4", "waiter", 1)


def test_a_health_check_may_lease_a_device_whose_health_blocks(
        redis_client: redis.Redis) -> None:
    leases, book = Leases(redis_client), HealthBook(redis_client)
    book.set("r5", Health.BAD, reason="no prompt", by="check-1")
    with pytest.raises(DeviceUnavailable):
        leases.acquire("r5", "task-1", 1)
    assert isinstance(leases.acquire("r5", "check-2", 1, checking=True), Grant)
    assert isinstance(leases.acquire("r5", "check-3", 1, checking=True), Wait)  # in line
