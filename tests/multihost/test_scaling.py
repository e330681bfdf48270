"""Live scaling across lab hosts: a host added mid-run takes work at once, a
host removed with a warm shutdown finishes its tasks and loses none, and
``labq scale`` grows and shrinks a worker's pool."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from itertools import cycle, islice

import labq
from labq.embedded.stack import PROJECT_ROOT, child_env
from labq.ops.scaling import pool_size
from tasks.device import execute

from .conftest import NetLab

#: Tasks per scaling run: with two slots per host and about 0.7 s per task,
#: enough to keep a host busy for longer than a new worker takes to start.
TASKS = 48


def submit_segment_a(netlab: NetLab, run: labq.Run, n: int = TASKS) -> list[str]:
    return [run.submit(execute, device=device, command="show version")
            for device in islice(cycle(netlab.devices("lab-a")), n)]


def wait_for(run: labq.Run, what: str, check: Callable[[list[labq.Outcome]], bool],
             timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        run.refresh()
        if check(run.outcomes):
            return
        assert time.monotonic() < deadline, f"{what} not seen in {timeout} s: {run.outcomes}"
        time.sleep(0.1)


def assert_all_succeeded_once(outcomes: list[labq.Outcome], ids: list[str]) -> None:
    # One outcome per submitted task, each in one final status: succeeded.
    assert [o.task_id for o in outcomes] == ids
    assert [o.status for o in outcomes] == [labq.Status.SUCCEEDED] * len(ids)


def test_a_host_added_mid_run_takes_work_at_once(netlab: NetLab) -> None:
    with labq.Run("scale-out", settings=netlab.settings_for_client(), progress=False) as run:
        ids = submit_segment_a(netlab, run)
        wait_for(run, "two finished tasks",
                 lambda os: sum(o.status is labq.Status.SUCCEEDED for o in os) >= 2)
        netlab.add_host("lab-a2", "lab-a")  # returns once its worker answers
        run.refresh()
        queued = [o for o in run.outcomes if o.status is labq.Status.QUEUED]
        assert len(queued) >= 4, "the run ended before lab-a2 was up; raise TASKS"
        outcomes = run.wait(timeout=180)
    assert_all_succeeded_once(outcomes, ids)
    by_host: dict[str, list[labq.Outcome]] = {}
    for o in outcomes:
        by_host.setdefault(str(o.worker), []).append(o)
    assert set(by_host) == {netlab.node("lab-a"), netlab.node("lab-a2")}
    new, old = by_host[netlab.node("lab-a2")], by_host[netlab.node("lab-a")]
    assert len(new) >= 2
    # At once: the new host started work while the old one still had work to start.
    first_new = min(o.started_at for o in new if o.started_at)
    last_old = max(o.started_at for o in old if o.started_at)
    assert first_new < last_old


def test_a_host_removed_with_a_warm_shutdown_finishes_its_tasks_and_loses_none(
        netlab: NetLab) -> None:
    netlab.add_host("lab-a2", "lab-a")
    leaving = netlab.node("lab-a")
    with labq.Run("warm-removal", settings=netlab.settings_for_client(), progress=False) as run:
        ids = submit_segment_a(netlab, run, TASKS // 2)
        wait_for(run, "a task running on lab-a", lambda os: any(
            o.status is labq.Status.RUNNING and o.worker == leaving for o in os))
        running = {o.task_id for o in run.outcomes
                   if o.status is labq.Status.RUNNING and o.worker == leaving}
        assert netlab.stop_worker("lab-a", warm=True) == 0
        stopped_at = time.time()
        outcomes = run.wait(timeout=180)
    assert_all_succeeded_once(outcomes, ids)
    by_id = {o.task_id: o for o in outcomes}
    # What ran on lab-a at SIGTERM finished there; lab-a took nothing after it left.
    assert all(by_id[t].worker == leaving for t in running)
    assert all(o.finished_at and o.finished_at.timestamp() <= stopped_at
               for o in outcomes if o.worker == leaving)
    assert any(o.worker == netlab.node("lab-a2") for o in outcomes)


def labq_cli(netlab: NetLab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labq", *args], capture_output=True, text=True,
                          env=child_env(netlab.settings_for_client()), cwd=PROJECT_ROOT,
                          timeout=60)


def test_labq_scale_grows_and_shrinks_a_pool_live(netlab: NetLab) -> None:
    node = netlab.node("lab-b")
    app = netlab.app()
    try:
        before = pool_size(app, node)
        grown = labq_cli(netlab, "scale", "lab-b", str(before + 2))
        assert grown.returncode == 0, grown.stderr
        assert grown.stdout.strip() == f"{node}: pool {before} -> {before + 2}"
        assert pool_size(app, node) == before + 2
        shrunk = labq_cli(netlab, "scale", node, "1")
        assert shrunk.returncode == 0, shrunk.stderr
        assert pool_size(app, node) == 1
        # The shrunk pool still runs tasks.
        with labq.Run("after-scale", app=app, progress=False) as run:
            run.submit(execute, device="b1", command="show version")
            assert [o.status for o in run.wait(timeout=60)] == [labq.Status.SUCCEEDED]
        back = labq_cli(netlab, "scale", "lab-b", str(before))
        assert back.returncode == 0 and pool_size(app, node) == before
    finally:
        app.close()


def test_labq_scale_names_an_unknown_host(netlab: NetLab) -> None:
    done = labq_cli(netlab, "scale", "lab-zz", "3")
    assert done.returncode == 2
    assert "'lab-zz'" in done.stderr and netlab.node("lab-a") in done.stderr
