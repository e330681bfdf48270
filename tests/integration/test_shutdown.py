"""Worker shutdown: warm lets running tasks finish and hands queued ones back;
cold kills the children and everything they started."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil

import labq
from conftest import kill_leftovers, still_alive, wait_recorded
from labq.app import create_app
from labq.embedded.processes import spawn, stop_tree
from labq.embedded.stack import Stack, child_env, node_name, worker_argv
from labq.settings import Settings
from tasks import diag


def start_worker(settings: Settings, name: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    app = create_app(settings)
    proc = spawn(worker_argv(settings, name, [], concurrency=1),
                 log_path=tmp_path / f"{name}.log", env=child_env(settings))
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[node_name(name)], timeout=0.5):
        assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline
    app.close()
    return proc


def test_warm_shutdown_finishes_running_work_and_hands_queued_work_back(
        stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings.replace(default_queue="warm-q", shutdown_timeout=20)
    first = start_worker(settings, "warm-1", tmp_path)
    run = labq.Run("warm", settings=settings, progress=False)
    try:
        ids = [run.submit(diag.sleep, seconds=3) for _ in range(3)]
        deadline = time.monotonic() + 30
        while not run.redis.hexists(f"labq:run:{run.id}:started", ids[0]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)  # warm: finish what runs, take nothing new
        first.wait(timeout=30)
        run.refresh()
        by_id = {o.task_id: o for o in run.outcomes}
        assert by_id[ids[0]].status is labq.Status.SUCCEEDED
        assert [by_id[i].status for i in ids[1:]] == [labq.Status.QUEUED] * 2
        second = start_worker(settings, "warm-2", tmp_path)
        try:
            outcomes = run.wait(timeout=60)
        finally:
            stop_tree(second, timeout=20)
        assert [o.status for o in outcomes] == [labq.Status.SUCCEEDED] * 3
        assert [o.worker.split("@")[0] for o in outcomes if o.worker] == [
            "warm-1", "warm-2", "warm-2"]
    finally:
        stop_tree(first, timeout=5)
        run.close()


def test_cold_shutdown_leaves_no_process_of_a_task_behind(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings.replace(default_queue="cold-q", shutdown_timeout=2)
    worker = start_worker(settings, "cold-1", tmp_path)
    tree = [worker.pid]
    pidfile = tmp_path / "pids"
    run = labq.Run("cold", settings=settings, progress=False)
    try:
        # Sleepers that ignore SIGTERM, in their own session, out of the
        # child's process group.
        run.submit(diag.spawn_sleepers, n=2, seconds=3600, pidfile=str(pidfile),
                   new_session=True)
        roles = wait_recorded(pidfile, 2)
        tree += [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
        worker.send_signal(signal.SIGQUIT)  # cold shutdown
        worker.wait(timeout=60)
        everything = tree + roles["task"] + roles["child"]
        assert still_alive(everything, timeout=5) == []
    finally:
        kill_leftovers(tree + recorded_pids(pidfile))
        stop_tree(worker, timeout=5)
        run.cancel(grace=0)
        run.close()


def recorded_pids(pidfile: Path) -> list[int]:
    if not pidfile.exists():
        return []
    return [int(line.split()[1]) for line in pidfile.read_text().splitlines()]
