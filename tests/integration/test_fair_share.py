"""Fair share between runs, and priorities (labq.fairshare), as properties of many tasks.

A lab of its own: one queue, ``fs``, served by one worker of 3 slots, and 6
simulated devices that take 8 sessions each (so no task waits for a lease:
the order tasks start in is the dispatch order). Several runs submit at
conflicting times and in conflicting device orders; each rule is checked
against the start order of the outcomes and the simulated lab's own session
accounting.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

import labq
from conftest import stack_settings
from labq.app import LabqCelery, create_app
from labq.embedded.ports import free_ports
from labq.embedded.sim.testbeds import device_entry, write_testbed
from labq.embedded.stack import Stack, WorkerSpec
from labq.fairshare.backlogs import Backlogs
from labq.keys import FAIR_QUEUES_KEY
from tasks import diag, topology

SLOTS = 3
DEVICES = [f"fs{i}" for i in range(6)]
HOLD = 0.12
#: The lab's priority_age: a waiting run's next task goes first once its last is this old.
AGE = 3.0
#: How late past AGE a low run's next task may start: a slot must free first.
AGE_SLACK = 2.0
#: Starts that may come out of order, or for the wrong run, around a change:
#: messages already on the queue's list or on their way to a child.
SLACK = 2 * SLOTS


def fs_testbed(path: Path, queue: str = "fs") -> Path:
    ports = iter(free_ports(len(DEVICES)))
    devices = {name: device_entry("127.0.0.1", next(ports), queue=queue, max_sessions=8)
               for name in DEVICES}
    return write_testbed(path, devices, name="fair-share-lab")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("fair")
    settings = stack_settings(tmp, testbed=fs_testbed(tmp / "testbed.yaml"), priority_age=AGE)
    s = Stack(settings, workers=(WorkerSpec("fs1", ("fs",), concurrency=SLOTS),),
              with_flower=False).start()
    yield s
    s.stop()


def client_app(lab: Stack, **changes: object) -> LabqCelery:
    return create_app(lab.settings.replace(**changes))


def start_ranks(outcomes: Sequence[labq.Outcome]) -> dict[str, int]:
    """Each task's place in the order the tasks started."""
    ordered = sorted(outcomes, key=lambda o: o.started_at or o.finished_at)  # type: ignore[arg-type, return-value]
    return {o.task_id: i for i, o in enumerate(ordered)}


def assert_own_order(run_ids: Sequence[str], ranks: dict[str, int]) -> None:
    """A run's tasks start in the order they were submitted, but for tasks
    that start side by side (at most SLOTS apart)."""
    worst = max((ranks[a] - ranks[b] for i, a in enumerate(run_ids) for b in run_ids[i + 1:]),
                default=0)
    assert worst <= SLOTS, f"a task started {worst} places before one submitted earlier"


def devices_in(order: Sequence[str], n: int) -> list[str]:
    return [order[i % len(order)] for i in range(n)]


@pytest.mark.parametrize("seed", [int(os.environ.get("PROPERTY_SEED") or
                                      random.SystemRandom().randrange(10**6))])
def test_runs_share_the_slots_round_robin_high_first_each_in_its_own_order(
        lab: Stack, seed: int) -> None:
    assert lab.sim is not None
    lab.sim.reset()
    rnd = random.Random(seed)
    credit = rnd.choice([0, 4])
    n = {"a": rnd.randint(40, 60), "b": rnd.randint(20, 35), "c": rnd.randint(8, 14),
         "d": rnd.randint(12, 20)}
    order = DEVICES[:]
    rnd.shuffle(order)
    apps = {name: client_app(lab, fair_credit=credit) for name in n}
    runs = {"a": labq.Run("fair-a", app=apps["a"], progress=False, logs=False),
            "b": labq.Run("fair-b", app=apps["b"], progress=False, logs=False),
            "c": labq.Run("fair-c", app=apps["c"], progress=False, logs=False, priority="high"),
            "d": labq.Run("fair-d", app=apps["d"], progress=False, logs=False, priority="low")}
    ids: dict[str, list[str]] = {name: [] for name in n}

    def submit(name: str, delay: float, devices: list[str], batches: int) -> None:
        time.sleep(delay)
        calls = [{"device": d, "seconds": HOLD} for d in devices]
        size = -(-len(calls) // batches)
        for start in range(0, len(calls), size):
            ids[name] += runs[name].submit_many(topology.hold, calls[start:start + size])
            time.sleep(rnd.uniform(0.05, 0.3))

    # a: first, in one order; d (low): soon after, in batches; b: later, in
    # the reverse order; c (high): last, one device at a time.
    plan = [("a", 0.0, devices_in(order, n["a"]), 1),
            ("d", 0.3, devices_in(order[::-1], n["d"]), 3),
            ("b", 0.8, devices_in(order[::-1], n["b"]), 2),
            ("c", 1.6, devices_in(order[1:] + order[:1], n["c"]), n["c"])]
    threads = [threading.Thread(target=submit, args=p) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = {name: run.wait(timeout=180) for name, run in runs.items()}
    for run in runs.values():
        run.close()
    for a in apps.values():
        a.close()
    everything = [o for os_ in outcomes.values() for o in os_]
    assert len(everything) == sum(n.values())
    assert all(o.ok for o in everything), [o.error for o in everything if not o.ok][:3]

    # Each task ran once, by the devices' own count: one session per task.
    state = lab.sim.state(events=True)
    opened = sum(state[d]["opened"] for d in DEVICES)
    assert opened == len(everything), (opened, len(everything))
    assert all(state[d]["sessions"] == 0 for d in DEVICES)

    ranks = start_ranks(everything)
    for name in n:
        assert_own_order(ids[name], ranks)

    by_task = {o.task_id: (name, o) for name, os_ in outcomes.items() for o in os_}
    starts = sorted(everything, key=lambda o: o.started_at)  # type: ignore[arg-type, return-value]
    # High first: once c waits, others start only from what was already on its way.
    c_first = min(o.queued_at for o in outcomes["c"])  # type: ignore[type-var]
    c_last = max(o.started_at for o in outcomes["c"])  # type: ignore[type-var]
    overtook = [o for o in starts if by_task[o.task_id][0] != "c"
                and c_first < o.started_at < c_last]  # type: ignore[operator]
    # c submits one task at a time: each submit may find a slot that frees meanwhile.
    assert len(overtook) <= SLACK + n["c"], (len(overtook), seed)

    # Round-robin: while a and b both wait, b (the later) is never more than
    # the credit ahead of a, and a never more than the slack ahead of b.
    b_first = min(o.queued_at for o in outcomes["b"])  # type: ignore[type-var]
    both_until = min(max(o.started_at for o in outcomes[x]) for x in "ab")  # type: ignore[type-var]
    lead, worst_b, worst_a = 0, 0, 0
    for o in starts:
        name = by_task[o.task_id][0]
        if name in "ab" and b_first < o.started_at <= both_until:  # type: ignore[operator]
            lead += 1 if name == "b" else -1
            worst_b, worst_a = max(worst_b, lead), max(worst_a, -lead)
    assert worst_b <= credit + SLACK, (worst_b, credit, seed)
    assert worst_a <= SLACK, (worst_a, seed)

    # Low last, but never starved: while normal or high runs wait, d starts a
    # task only once its previous start (or its submit) is about AGE old, and
    # never much later than that (the documented bound).
    others_last = max(o.started_at for x in "abc" for o in outcomes[x])  # type: ignore[type-var]
    prev = min(o.queued_at for o in outcomes["d"])  # type: ignore[type-var]
    early, gaps = [], []
    for started in sorted(o.started_at for o in outcomes["d"]):  # type: ignore[type-var]
        if started >= others_last:
            break
        gap = (started - prev).total_seconds()  # type: ignore[operator]
        assert gap <= AGE + AGE_SLACK, (gap, seed)
        gaps.append(gap)
        if gap < AGE - 0.5:
            early.append(gap)
        prev = started
    assert len(early) <= SLACK, (early, seed)
    print(f"seed {seed}: credit {credit}, tasks {n}, b ahead at most {worst_b}, "
          f"a ahead at most {worst_a}, overtook c {len(overtook)}, d early {len(early)}, "
          f"d served {len(gaps)} times while others waited, at most {max(gaps, default=0):.1f} s apart")

    # Nothing is left behind in the backlogs.
    client = redis.Redis.from_url(lab.settings.broker_url)
    assert Backlogs(client).waiting() == []
    assert not client.smembers(FAIR_QUEUES_KEY)
    client.close()


def test_a_high_run_behind_a_normal_backlog_starts_on_the_next_free_slot(lab: Stack) -> None:
    app = client_app(lab)
    try:
        with labq.Run("backlog", app=app, progress=False, logs=False) as big:
            big.submit_many(topology.hold, [{"device": d, "seconds": 0.4}
                                            for d in devices_in(DEVICES, 30)])
            time.sleep(1.0)  # every slot busy, the rest waiting
            with labq.Run("urgent", app=app, progress=False, logs=False,
                          priority="high") as urgent:
                urgent.submit(topology.hold, device=DEVICES[0], seconds=0.1)
            big.cancel()
        mine = urgent.outcomes[0]
        assert mine.ok and mine.started_at and mine.queued_at
        normal = [o for o in big.outcomes if o.started_at]
        # Between its submit and its start, no normal task started but one on its way.
        between = [o for o in normal
                   if mine.queued_at < o.started_at < mine.started_at]  # type: ignore[operator]
        assert len(between) <= 1, between
        # ... and it started when the first running task ended.
        ends = sorted(o.finished_at for o in normal
                      if o.finished_at and o.finished_at > mine.queued_at)
        assert ends and (mine.started_at - ends[0]).total_seconds() < 0.3, (mine, ends[:2])
    finally:
        app.close()


def test_priority_and_owner_travel_with_every_task(lab: Stack) -> None:
    app = client_app(lab)
    try:
        with labq.Run("tags", app=app, progress=False, logs=False, priority="low",
                      owner="ana") as run:
            run.submit(diag.echo, 1)
        assert run.owner == "ana" and run.priority is labq.Priority.LOW
        assert run.outcomes[0].ok and run.outcomes[0].value == 1
        with labq.Run("tags2", app=app, progress=False, logs=False) as default:
            pass
        assert default.owner and default.priority is labq.Priority.NORMAL
    finally:
        app.close()


@pytest.mark.parametrize("bad", [{"priority": "urgent"}, {"priority": 3}, {"owner": ""},
                                 {"owner": "two\nlines"}, {"hold_on_failure": "-5m"},
                                 {"hold_on_failure": "soon"}])
def test_bad_run_options_are_refused_by_name(lab: Stack, bad: dict[str, object]) -> None:
    app = client_app(lab)
    try:
        with pytest.raises(labq.LabqError) as err:
            labq.Run("bad", app=app, progress=False, **bad)  # type: ignore[arg-type]
        assert repr(next(iter(bad.values()))) in str(err.value)
    finally:
        app.close()


def test_a_cancel_drops_the_backlog(lab: Stack) -> None:
    app = client_app(lab)
    client = redis.Redis.from_url(lab.settings.broker_url)
    try:
        run = labq.Run("dropped", app=app, progress=False, logs=False)
        run.submit_many(topology.hold, [{"device": d, "seconds": 0.3}
                                        for d in devices_in(DEVICES, 40)])
        waiting = {w.run_id: w.tasks for w in Backlogs(client).waiting()}
        assert waiting.get(run.id, 0) >= 40 - SLOTS - 1, waiting
        run.cancel(grace=2)
        statuses = {o.status for o in run.outcomes}
        assert statuses <= {labq.Status.CANCELLED, labq.Status.SUCCEEDED}, statuses
        assert sum(o.status is labq.Status.CANCELLED for o in run.outcomes) >= 30
        assert all(w.run_id != run.id for w in Backlogs(client).waiting())
        run.close()
    finally:
        client.close()
        app.close()
