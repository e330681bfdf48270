"""A hard kill takes the prefork child and every process it started (labq.worker.killing).

The diag tasks record their own PID and those of the processes they start
in a pidfile; after the limit or the revoke, the process table must hold
none of them (zombies count as dead) and the worker must keep serving.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import labq
from conftest import alive, kill_leftovers, need, recorded, still_alive, wait_recorded
from labq.app import LabqCelery
from labq.embedded.stack import Stack
from tasks import diag

LIMITS: dict[str, Any] = {"soft_time_limit": 1, "time_limit": 2}
#: How long after the outcome a killed process may still be in the table.
GRACE = 1.0
HAS_PYATS = importlib.util.find_spec("pyats") is not None


def assert_worker_serves(app: LabqCelery, worker: str | None) -> None:
    """An echo to the queue of the worker that ran the killed task comes back."""
    assert worker, "the outcome names no worker"
    res = app.send_task("tasks.diag.echo", kwargs={"value": "still here"},
                        queue=worker.split("@")[0])
    assert res.get(timeout=30) == "still here"


#: A pcall child needs about a second before it runs the function (pyATS
#: resolves the path of every loaded module in each child), more on a busy
#: host: its limits leave room for all four to start.
PCALL_LIMITS: dict[str, Any] = {"soft_time_limit": 2, "time_limit": 6}

# Each starts processes that only a kill of the whole tree ends, and ignores
# the soft limit, so the hard limit is what stops it.
HARD_CASES = [
    pytest.param(diag.spawn_sleepers, {"n": 2}, 2, LIMITS, id="subprocess-ignoring-sigterm"),
    pytest.param(diag.spawn_sleepers, {"n": 2, "new_session": True}, 2, LIMITS,
                 id="subprocess-in-own-session"),
    pytest.param(diag.pool_children, {"n": 4}, 4, LIMITS, id="multiprocessing-pool-4"),
    pytest.param(diag.pcall_children, {"n": 4}, 4, PCALL_LIMITS, id="pyats-pcall-4"),
]


@pytest.mark.parametrize(("task", "kwargs", "children", "limits"), HARD_CASES)
def test_hard_limit_kills_the_child_and_all_it_started(
        app: LabqCelery, tmp_path: Path, task: Any, kwargs: dict[str, Any], children: int,
        limits: dict[str, Any],
) -> None:
    if task is diag.pcall_children:
        need(HAS_PYATS, "pyATS is not installed (pip install labq[pyats])")
    pidfile = tmp_path / "pids"
    with labq.Run("hard-kill", app=app, progress=False) as run:
        run.submit(task, pidfile=str(pidfile), **kwargs, **limits)
    outcome = run.outcomes[0]
    roles = recorded(pidfile)
    pids = roles.get("task", []) + roles.get("child", [])
    try:
        assert outcome.status is labq.Status.HARD_TIMEOUT, outcome
        assert len(roles.get("child", [])) == children, roles
        assert still_alive(pids) == []
    finally:
        kill_leftovers(pids)
    assert_worker_serves(app, outcome.worker)


def test_a_hard_killed_task_says_where_it_was_stuck(app: LabqCelery) -> None:
    # diag.stubborn swallows the soft limit and sleeps on.
    with labq.Run("stack", app=app, progress=False) as run:
        run.submit(diag.stubborn, seconds=60, **LIMITS)
    outcome = run.outcomes[0]
    assert outcome.status is labq.Status.HARD_TIMEOUT, outcome
    assert outcome.error is not None
    # Its traceback is the child's stacks, taken just before the kill (labq.worker.child_stacks),
    # without the pool's frames around the task.
    stacks = outcome.error.traceback
    assert "most recent call first" in stacks and "diag.py" in stacks, stacks
    assert "in stubborn" in stacks and "billiard" not in stacks, stacks
    assert_worker_serves(app, outcome.worker)


def test_a_child_leads_its_own_process_group(app: LabqCelery, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    with labq.Run("groups", app=app, progress=False) as run:
        task_id = run.submit(diag.spawn_sleepers, n=2, seconds=5, pidfile=str(pidfile))
        roles = wait_recorded(pidfile, 2)
        try:
            (child,) = roles["task"]
            assert os.getpgid(child) == child
            assert {os.getpgid(p) for p in roles["child"]} == {child}
        finally:
            app.control.revoke(task_id, terminate=True, signal="SIGKILL")
    assert still_alive(roles["task"] + roles["child"]) == []


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_terminating_revoke_takes_the_whole_tree(
        app: LabqCelery, tmp_path: Path, sig: str) -> None:
    pidfile = tmp_path / "pids"
    with labq.Run("revoke", app=app, progress=False) as run:
        task_id = run.submit(diag.pool_children, n=4, pidfile=str(pidfile),
                             soft_time_limit=60, time_limit=120)
        roles = wait_recorded(pidfile, 4)
        app.control.revoke(task_id, terminate=True, signal=sig)
    pids = roles["task"] + roles["child"]
    try:
        assert run.outcomes[0].status is labq.Status.CANCELLED, run.outcomes[0]
        assert still_alive(pids) == []
    finally:
        kill_leftovers(pids)
    assert_worker_serves(app, run.outcomes[0].worker)


def wait_running(run: labq.Run, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while run.outcomes[0].status is not labq.Status.RUNNING:
        assert time.monotonic() < deadline, run.outcomes[0]
        run.refresh()
        time.sleep(0.05)


def test_cancel_kills_a_task_that_ignores_the_interrupt(app: LabqCelery, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    run = labq.Run("cancel", app=app, progress=False)
    try:
        run.submit(diag.spawn_sleepers, n=2, pidfile=str(pidfile), soft_time_limit=60,
                   time_limit=120)
        roles = wait_recorded(pidfile, 2)
        wait_running(run)
        outcomes = run.cancel(grace=0.5)
    finally:
        run.close()
    pids = roles["task"] + roles["child"]
    try:
        assert outcomes[0].status is labq.Status.CANCELLED
        assert still_alive(pids) == []
    finally:
        kill_leftovers(pids)


@pytest.mark.parametrize(("task", "n"), [
    pytest.param(diag.pool_children, 4, id="multiprocessing-pool"),
    pytest.param(diag.pcall_children, 4, id="pyats-pcall"),
])
def test_a_task_may_start_processes_that_return_results(
        app: LabqCelery, tmp_path: Path, task: Any, n: int) -> None:
    if task is diag.pcall_children:
        need(HAS_PYATS, "pyATS is not installed (pip install labq[pyats])")
    pidfile = tmp_path / "pids"
    with labq.Run("processes", app=app, progress=False) as run:
        run.submit(task, n=n, seconds=0.2, pidfile=str(pidfile))
    outcome = run.outcomes[0]
    assert outcome.status is labq.Status.SUCCEEDED, outcome.error
    assert outcome.value["results"] == [i * i for i in range(n)]
    roles = recorded(pidfile)
    assert len(set(roles["child"])) == n and roles["task"][0] not in roles["child"]
    assert still_alive(roles["child"]) == []


def test_processes_a_task_forks_get_default_signal_actions(app: LabqCelery) -> None:
    # billiard's SIGTERM handler, inherited, made Pool.__exit__ hang now and then.
    with labq.Run("signals", app=app, progress=False) as run:
        run.submit(diag.child_signals)
    outcome = run.outcomes[0]
    assert outcome.status is labq.Status.SUCCEEDED, outcome.error
    actions = outcome.value["child"]
    assert actions["SIGTERM"] == "SIG_DFL", actions
    assert actions["SIGHUP"] == "SIG_DFL", actions


def test_prefork_children_run_below_their_main_process(app: LabqCelery, stack: Stack) -> None:
    # The dispatcher (and heartbeat writer) must not wait behind its own tasks.
    assert stack.settings.child_nice > 0
    with labq.Run("priority", app=app, progress=False) as run:
        run.submit(diag.sleep, seconds=0)
    main = psutil.Process(psutil.Process(run.outcomes[0].value["pid"]).ppid())
    assert "worker" in " ".join(main.cmdline())
    assert run.outcomes[0].value["nice"] == min(19, main.nice() + stack.settings.child_nice)


def test_a_task_may_run_subprocesses_to_completion(app: LabqCelery) -> None:
    with labq.Run("subprocesses", app=app, progress=False) as run:
        run.submit(diag.spawn_sleepers, n=2, seconds=0.1)
    outcome = run.outcomes[0]
    assert outcome.status is labq.Status.SUCCEEDED, outcome.error
    assert outcome.value["codes"] == [0, 0]


def test_cancel_interrupts_a_task_that_obeys_without_a_kill(
        app: LabqCelery, tmp_path: Path) -> None:
    # The interrupt must leave the task active: it ends on its own, cleaning up.
    pidfile = tmp_path / "pids"
    run = labq.Run("interrupt", app=app, progress=False)
    try:
        run.submit(diag.spawn_sleepers, n=2, pidfile=str(pidfile), obey_soft=True,
                   soft_time_limit=60, time_limit=120)
        roles = wait_recorded(pidfile, 2)
        wait_running(run)
        started = time.monotonic()
        outcomes = run.cancel(grace=20)
        elapsed = time.monotonic() - started
    finally:
        run.close()
    try:
        assert outcomes[0].status is labq.Status.CANCELLED
        assert outcomes[0].error is not None and outcomes[0].error.type == "TaskCancelled"
        assert elapsed < 10, "the cancel waited for the grace period: the interrupt was lost"
        assert still_alive(roles["child"]) == []
        assert alive(roles["task"][0]), "the prefork child was killed, not interrupted"
    finally:
        kill_leftovers(roles["child"])
