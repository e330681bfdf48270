"""Device tasks that wait park in Redis, not in a prefork slot (the session stack)."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

import labq
from labq.app import LabqCelery
from labq.devices.lease import Leases
from labq.embedded.stack import Stack
from labq.keys import PARKED_KEY, parked_key
from labq.outcome import Status
from tasks import topology


def parked(client: redis.Redis, task_ids: list[str]) -> list[str]:
    return [t for t in task_ids if client.exists(parked_key(t))]


def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def outcome(run: labq.Run, task_id: str) -> labq.Outcome:
    run.refresh()
    return next(o for o in run.outcomes if o.task_id == task_id)


def test_waiters_hold_no_slot_and_each_runs_once_its_turn_comes(
        app: LabqCelery, stack: Stack) -> None:
    client = redis.Redis.from_url(stack.settings.broker_url)
    with labq.Run("parked", app=app, progress=False) as run:
        first = run.submit(topology.hold, device="a9", seconds=2.0)
        until(lambda: outcome(run, first).status is Status.RUNNING)
        # Twice as many waiters as lab-a has prefork slots (8).
        waiters = [run.submit(topology.hold, device="a9", seconds=0.02) for _ in range(16)]
        until(lambda: len(parked(client, waiters)) >= 15)
        # Parked, a task runs nowhere: its run sees it queued, on no worker, so
        # the death of the worker that parked it cannot make it lost.
        for w in parked(client, waiters):
            o = outcome(run, w)
            assert (o.status, o.worker) == (Status.QUEUED, None), o
        # Every slot is free for other work meanwhile: another device's task runs now.
        other = run.submit(topology.hold, device="a10", seconds=0.0)
        until(lambda: outcome(run, other).status.final, timeout=10)
        assert outcome(run, other).value == "a10"
        assert outcome(run, first).status is Status.RUNNING
        outcomes = run.wait(timeout=60)
    assert all(o.ok for o in outcomes), [(o.task_id, o.error) for o in outcomes if not o.ok]
    assert stack.sim is not None
    assert stack.sim.state("a9", events=False)["peak"] <= 1
    # The first waiter ran after the holder, and no retry was left parked.
    done = {o.task_id: o for o in outcomes}
    assert min(done[w].started_at for w in waiters) >= done[first].finished_at  # type: ignore[operator]
    assert parked(client, [first, *waiters]) == []
    assert not client.zscore(PARKED_KEY, waiters[-1])
    client.close()


def test_a_cancel_drops_parked_waiters_at_once_and_they_leave_the_line(
        app: LabqCelery, stack: Stack) -> None:
    client = redis.Redis.from_url(stack.settings.broker_url)
    leases = Leases(client)
    with labq.Run("holder", app=app, progress=False) as holding:
        first = holding.submit(topology.hold, device="a8", seconds=3.0)
        until(lambda: outcome(holding, first).status is Status.RUNNING)
        run = labq.Run("cancelled", app=app, progress=False)
        waiters = [run.submit(topology.hold, device="a8", seconds=0.0) for _ in range(3)]
        until(lambda: len(parked(client, waiters)) == 3)
        outcomes = run.cancel(grace=30)
        run.close()
        # Ended at once, not after the grace: the holder still has the device.
        assert outcome(holding, first).status is Status.RUNNING
        assert [o.status for o in outcomes] == [Status.CANCELLED] * 3
        assert parked(client, waiters) == []
        assert [w.holder for w in leases.waiters("a8")] == []
        assert holding.wait(timeout=30)[0].ok
    client.close()
