"""A worker host that dies mid-run (labq.worker.liveness, labq.worker.reaper).

Its running tasks become ``lost`` within the heartbeat TTL, or run again
once elsewhere when idempotent; their leases are freed; a redelivered
message of a settled task never runs. Killed here with SIGKILL on the whole
worker tree; the link-cut case needs namespaces (tests/multihost).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import labq
from conftest import lab_testbed, recorded, stack_settings
from faults import kill_tree
from labq.app import LabqCelery, create_app
from labq.devices.lease import Leases
from labq.embedded.stack import Stack, WorkerSpec, node_name
from labq.keys import RESULT_PREFIX, RUN_KWARG, SCRIPT_KWARG, parked_key
from labq.worker.liveness import read_workers
from tasks import diag

TTL = 3.0


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[Stack]:
    """Two workers on the same queues, two slots each, a short heartbeat TTL."""
    settings = stack_settings(tmp_path, testbed=lab_testbed(tmp_path / "testbed.yaml"),
                              worker_ttl=TTL)
    queues = ("labq", "lab-a")
    s = Stack(settings, workers=(WorkerSpec("w1", queues), WorkerSpec("w2", queues)),
              with_flower=False).start()
    yield s
    s.stop()


@pytest.fixture()
def app(lab: Stack) -> Iterator[LabqCelery]:
    a = create_app(lab.settings)
    yield a
    a.close()


def wait_running(run: labq.Run, n: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while sum(o.status is labq.Status.RUNNING and bool(o.worker) for o in run.outcomes) < n:
        assert time.monotonic() < end, run.outcomes
        run.refresh()
        time.sleep(0.1)


def test_heartbeats_name_each_worker(lab: Stack) -> None:
    client = redis.Redis.from_url(lab.settings.broker_url)
    beats = {b.hostname: b for b in read_workers(client)}
    assert set(beats) == {node_name("w1"), node_name("w2")}
    beat = beats[node_name("w1")]
    assert beat.concurrency == 2 and set(beat.queues) == {"labq", "lab-a"}
    assert 0 <= time.time() - beat.beat_at < TTL


def test_tasks_of_a_killed_host_become_lost_and_free_their_leases(
        lab: Stack, app: LabqCelery) -> None:
    with labq.Run("death", app=app, progress=False) as run:
        ids = [run.submit(diag.hold_device, device=f"l{i}", seconds=8,
                          soft_time_limit=20, time_limit=30) for i in range(1, 5)]
        wait_running(run, 4)
        victim = node_name("w1")
        doomed = {o.task_id for o in run.outcomes if o.worker == victim}
        assert len(doomed) == 2, run.outcomes
        kill_tree(lab.processes["w1"].pid)
        killed_at = time.monotonic()
        lost = []
        for outcome in run.as_completed(timeout=40):
            if outcome.status is labq.Status.LOST:
                lost.append(outcome)
                held = {d.device for d in Leases(run.redis).snapshot() if d.holders}
                assert outcome.device not in held, "a lost task's lease was not freed"
                assert time.monotonic() - killed_at < 30
    by_id = {o.task_id: o for o in run.outcomes}
    assert {o.task_id for o in lost} == doomed
    assert all(victim in (o.error.message if o.error else "") for o in lost)
    for task_id in set(ids) - doomed:
        assert by_id[task_id].status is labq.Status.SUCCEEDED, by_id[task_id]
    # A host that comes back must not redo them: the old message is ignored.
    redelivered = next(iter(doomed))
    app.send_task("tasks.diag.hold_device", kwargs={
        "device": by_id[redelivered].device, "seconds": 0, RUN_KWARG: run.id,
        SCRIPT_KWARG: "redelivery"}, task_id=redelivered, queue="labq")
    echo = app.send_task("tasks.diag.echo", kwargs={"value": 1}, queue="labq")
    assert echo.get(timeout=30) == 1
    time.sleep(1)
    # Run, it would have succeeded at once; ignored, it keeps the end its
    # dead worker's peer stored (labq.worker.reaper).
    meta = json.loads(run.redis.get(f"{RESULT_PREFIX}{redelivered}"))
    assert meta["status"] == "FAILURE" and meta["labq_reaped"], meta
    assert meta["result"]["exc_type"] == "WorkerLostError"


def test_idempotent_tasks_of_a_killed_host_run_again_once(
        lab: Stack, app: LabqCelery, tmp_path: Path) -> None:
    pidfiles = [tmp_path / f"nap{i}" for i in range(4)]
    with labq.Run("rerun", app=app, progress=False) as run:
        ids = [run.submit(diag.nap, seconds=4, pidfile=str(p)) for p in pidfiles]
        wait_running(run, 4)
        victim = node_name("w1")
        doomed = {o.task_id for o in run.outcomes if o.worker == victim}
        kill_tree(lab.processes["w1"].pid)
        outcomes = run.wait(timeout=60)
    assert set(run.reruns) == doomed
    assert all(o.status is labq.Status.SUCCEEDED for o in outcomes), outcomes
    assert all(o.worker == node_name("w2") for o in outcomes
               if o.task_id in run.reruns.values())
    assert [o.task_id for o in outcomes] == [run.reruns.get(t, t) for t in ids]
    for pidfile in pidfiles:
        roles = recorded(pidfile)
        # Ran once, or started on the dead host and ran once more: never more.
        assert len(roles.get("end", [])) == 1, roles
        assert len(roles.get("start", [])) <= 2, roles


def test_waiters_parked_by_a_killed_host_still_run_once(lab: Stack, app: LabqCelery) -> None:
    client = redis.Redis.from_url(lab.settings.broker_url)
    with labq.Run("parked-death", app=app, progress=False) as run:
        holder = run.submit(diag.hold_device, device="l5", seconds=4)
        wait_running(run, 1)
        waiters = [run.submit(diag.hold_device, device="l5", seconds=0) for _ in range(4)]
        end = time.monotonic() + 20
        while sum(client.exists(parked_key(w)) for w in waiters) < 4:
            assert time.monotonic() < end, run.outcomes
            time.sleep(0.05)
        # Both hosts took first tries; w1 dies with its share of the parked ones.
        kill_tree(lab.processes["w1"].pid)
        outcomes = {o.task_id: o for o in run.wait(timeout=60)}
    # Parked, they ran nowhere: none is lost, and each ran once, on w2.
    for w in waiters:
        assert outcomes[w].status is labq.Status.SUCCEEDED, outcomes[w]
        assert outcomes[w].worker == node_name("w2")
    assert outcomes[holder].status in (labq.Status.SUCCEEDED, labq.Status.LOST)
    assert lab.sim is not None and lab.sim.state("l5", events=False)["peak"] <= 1
    client.close()
