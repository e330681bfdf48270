"""labq.Run and labq.pcall against real workers: outcomes, failures, timeouts, cancel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timezone
from pathlib import Path

import pytest
import redis

import labq
from conftest import FREE_DEVICES, SEGMENT_DEVICES
from labq.app import LabqCelery, create_app
from labq.embedded.processes import spawn, stop_tree
from labq.embedded.stack import Stack, child_env, worker_argv
from labq.keys import backlog_key
from tasks import diag


def test_outcomes_come_back_in_submit_order_with_worker_and_times(app: LabqCelery) -> None:
    with labq.Run("order", app=app, progress=False) as run:
        ids = [run.submit(diag.echo, value=i) for i in range(8)]
    outcomes = run.outcomes
    assert [o.task_id for o in outcomes] == ids
    assert [o.value for o in outcomes] == list(range(8))
    for o in outcomes:
        assert o.status is labq.Status.SUCCEEDED
        assert o.worker and o.worker.split("@")[0] in ("lab-a", "lab-b")
        assert o.queued_at and o.started_at and o.finished_at
        assert o.started_at.tzinfo is timezone.utc and o.finished_at.tzinfo is timezone.utc
        assert o.duration is not None and o.duration >= 0


def test_every_status_of_a_mixed_run(app: LabqCelery) -> None:
    with labq.Run("mixed", app=app, progress=False) as run:
        ok = run.submit(diag.sleep, seconds=0.1)
        bad = run.submit(diag.fail, message="kaputt")
        soft = run.submit(diag.sleep, seconds=30, soft_time_limit=0.5, time_limit=10)
        hard = run.submit(diag.stubborn, seconds=30, soft_time_limit=0.5, time_limit=1.5)
    by_id = {o.task_id: o for o in run.outcomes}
    assert by_id[ok].status is labq.Status.SUCCEEDED
    assert by_id[bad].status is labq.Status.FAILED
    err = by_id[bad].error
    assert err is not None and err.type == "RuntimeError" and err.message == "kaputt"
    assert "raise RuntimeError" in err.traceback
    assert by_id[soft].status is labq.Status.SOFT_TIMEOUT
    assert by_id[hard].status is labq.Status.HARD_TIMEOUT


def test_pcall_returns_results_in_call_order(app: LabqCelery) -> None:
    out = labq.pcall(diag.echo, value=[3, 1, 2], run=labq.Run("p", app=app, progress=False))
    assert out == (3, 1, 2)


def test_pcall_matches_pyats_pcall() -> None:
    pyats_async = pytest.importorskip("pyats.async_", reason="the pyats extra is not installed")
    # pyATS runs the task body locally in forked children; labq runs it on workers.
    kwargs = {"cargs": (), "ikwargs": [{"value": "a"}, {"value": "b"}, {"value": "c"}]}
    expected = pyats_async.pcall(diag.echo, **kwargs)
    assert tuple(expected) == ("a", "b", "c")


def test_pcall_matches_pyats_pcall_remotely(app: LabqCelery) -> None:
    pyats_async = pytest.importorskip("pyats.async_", reason="the pyats extra is not installed")
    cases = [
        {"value": [1, 2, 3]},
        {"ikwargs": [{"value": "x"}, {"value": "y"}]},
        {"iargs": [(1,), (2,)], "value": None},
    ]
    for case in cases:
        case = {k: v for k, v in case.items() if v is not None}
        theirs = tuple(pyats_async.pcall(diag.echo, **case))
        ours = labq.pcall(diag.echo, run=labq.Run("cmp", app=app, progress=False), **case)
        assert ours == theirs, case


def test_pcall_failure_carries_the_remote_error_and_outcomes(app: LabqCelery) -> None:
    with pytest.raises(labq.TaskFailed) as info:
        labq.pcall(diag.fail, message=["first", "second"],
                   run=labq.Run("f", app=app, progress=False))
    assert info.value.error is not None and info.value.error.type == "RuntimeError"
    assert info.value.error.message in ("first", "second")
    assert len(info.value.outcomes) == 2
    assert all(o.status.final for o in info.value.outcomes)


def test_pcall_timeout_cancels_the_rest_and_keeps_the_finished(app: LabqCelery) -> None:
    started = time.monotonic()
    with pytest.raises(labq.RunTimeout) as info:
        labq.pcall(diag.sleep, seconds=[0.2, 120, 0.2], timeout=3,
                   run=labq.Run("t", app=app, progress=False, grace=2))
    elapsed = time.monotonic() - started
    # Cancelled at the timeout, not left to the 120 s sleep (slack for a busy host).
    assert 3 <= elapsed < 60
    statuses = [o.status for o in info.value.outcomes]
    assert statuses == [labq.Status.SUCCEEDED, labq.Status.CANCELLED, labq.Status.SUCCEEDED]
    assert info.value.outcomes[0].value["slept"] == 0.2


def test_bad_submissions_are_refused_before_anything_is_queued(app: LabqCelery) -> None:
    with labq.Run("bad", app=app, progress=False) as run:
        with pytest.raises(labq.SubmitError, match=r"no\.such\.task"):
            run.submit("tasks.no.such.task")
        with pytest.raises(labq.SubmitError, match=r"value=.*not JSON"):
            run.submit(diag.echo, value=object())
        with pytest.raises(labq.TimeLimitError, match=r"soft_time_limit=9.*time_limit=5"):
            run.submit(diag.echo, value=1, soft_time_limit=9, time_limit=5)
        with pytest.raises(labq.TimeLimitError, match="max_time_limit"):
            run.submit(diag.echo, value=1, soft_time_limit=1, time_limit=10**6)
        assert run.outcomes == []


def test_unreachable_redis_is_named(tmp_path: Path) -> None:
    settings = labq.Settings.load(env={}, config_file=os.devnull,
                                  broker_url="redis://:pw@127.0.0.1:1/0")
    with pytest.raises(labq.BrokerUnavailable, match=r"127\.0\.0\.1:1") as info:
        labq.Run("down", settings=settings, progress=False)
    assert "pw" not in str(info.value)


def test_cancel_is_durable_across_a_worker_that_starts_later(stack: Stack, tmp_path: Path) -> None:
    # A default queue no worker serves yet: the tasks wait in Redis.
    settings = stack.settings.replace(default_queue="durable-cancel")
    app = create_app(settings)
    run = labq.Run("durable", app=app, progress=False)
    ids = [run.submit(diag.sleep, seconds=0.1) for _ in range(5)]
    client = redis.Redis.from_url(settings.broker_url)
    # With no worker's slot free they wait in the run's fair-share backlog.
    backlog = backlog_key("durable-cancel", run.id)
    messages = client.lrange("durable-cancel", 0, -1) + client.lrange(backlog, 0, -1)
    assert len(messages) == 5
    outcomes = run.cancel()
    assert {o.status for o in outcomes} == {labq.Status.CANCELLED}
    # The cancel took them off the queue and out of the backlog.
    assert client.llen("durable-cancel") == 0 and client.llen(backlog) == 0
    # Put them back, as a broker restoring unacked messages would.
    client.rpush("durable-cancel", *messages)
    # Without mingle the new worker learns nothing of the revokes the others
    # hold in memory: only labq's flag in Redis can stop the tasks.
    argv = [*worker_argv(settings, "late", ["durable-cancel"], concurrency=1), "--without-mingle"]
    proc = spawn(argv, log_path=tmp_path / "late.log", env=child_env(settings))
    try:
        deadline = time.monotonic() + 60
        while client.llen("durable-cancel") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.llen("durable-cancel") == 0  # the late worker took every copy
        time.sleep(2.0)
        metas = [json.loads(client.get(f"celery-task-meta-{t}") or "{}") for t in ids]
        assert {m.get("status") for m in metas} <= {"REVOKED", "FAILURE"}
        assert {m["result"]["exc_type"] for m in metas} <= {"TaskRevokedError", "TaskCancelled"}
        # No task body ran: diag.sleep logs before it sleeps, and nothing was logged.
        assert client.xlen(f"labq:run:{run.id}:log") == 0
        assert "TaskCancelled" in (tmp_path / "late.log").read_text()
    finally:
        stop_tree(proc, timeout=10)
        run.close()


SCRIPT = textwrap.dedent("""
    import json, os, sys
    import labq
    from tasks import diag
    settings = labq.Settings.load()
    try:
        with labq.Run("ctrl-c", settings=settings, progress=False, grace=2) as run:
            devices = {devices!r}
            for i in range({n}):
                extra = {{"device": devices[i]}} if devices else {{}}
                run.submit(diag.{task}, seconds={seconds}, **extra)
            print("SUBMITTED", run.id, flush=True)
            run.wait()
    except KeyboardInterrupt:
        print("OUTCOMES", json.dumps([o.status.value for o in run.outcomes]), flush=True)
""")


def _script(stack: Stack, tmp_path: Path, n: int, task: str, seconds: float,
            devices: list[str] | None = None) -> subprocess.Popen[str]:
    path = tmp_path / "testscript.py"
    path.write_text(SCRIPT.format(n=n, task=task, seconds=seconds, devices=devices or []))
    env = {**child_env(stack.settings), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def test_ctrl_c_stops_a_50_task_run_within_5_s(stack: Stack, app: LabqCelery,
                                               tmp_path: Path) -> None:
    # Device tasks that hold their session and ignore the interrupt: only the
    # hard kill after the grace ends them.
    devices = FREE_DEVICES + SEGMENT_DEVICES["lab-a"][5:] + SEGMENT_DEVICES["lab-b"][5:]
    assert stack.sim is not None
    proc = _script(stack, tmp_path, 50, "hold_device", 60, devices)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.startswith("labq: run "):  # the run's id, announced on stderr
        line = proc.stdout.readline()
    assert line.startswith("SUBMITTED"), line
    run_id = line.split()[1]
    client = redis.Redis.from_url(stack.settings.broker_url)
    deadline = time.monotonic() + 30
    while client.hlen(f"labq:run:{run_id}:started") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    statuses = json.loads(out.split("OUTCOMES", 1)[1])
    assert len(statuses) == 50 and all(s in ("cancelled", "succeeded", "failed", "soft_timeout",
                                             "hard_timeout") for s in statuses)
    assert "cancelled" in statuses
    # Nothing of the run runs or waits in a queue any more.
    while time.monotonic() - sent < 5:
        active = app.control.inspect(timeout=1).active() or {}
        running = [t for tasks in active.values() for t in tasks
                   if run_id in json.dumps(t.get("kwargs", {}))]
        queued = sum(client.llen(q) for q in ("labq", "lab-a", "lab-b"))
        if not running and not queued:
            break
        time.sleep(0.2)
    assert not running and not queued
    # Every simulated device saw its session closed.
    while time.monotonic() - sent < 5 and any(
            stack.sim.state(d, events=False)["sessions"] for d in devices):
        time.sleep(0.2)
    open_devices = [d for d in devices if stack.sim.state(d, events=False)["sessions"]]
    assert open_devices == [], [stack.sim.state(d) for d in open_devices]


def test_live_logs_reach_the_testscript_before_the_task_ends(stack: Stack, tmp_path: Path) -> None:
    proc = _script(stack, tmp_path, 1, "sleep", 2)
    assert proc.stdout is not None
    seen: dict[str, float] = {}
    for line in proc.stdout:
        for marker in ("sleeping 2.0 s", "slept 2.0 s"):
            if marker in line:
                seen[marker] = time.monotonic()
    proc.wait(timeout=30)
    assert seen["slept 2.0 s"] - seen["sleeping 2.0 s"] > 1.5


def test_report_has_one_lane_per_slot_and_one_bar_per_task(app: LabqCelery,
                                                           tmp_path: Path) -> None:
    with labq.Run("report", app=app, progress=False) as run:
        for _ in range(8):
            run.submit(diag.sleep, seconds=0.3)
        run.submit(diag.fail, message="for the report")
    path = run.report(tmp_path / "report.html")
    text = path.read_text()
    assert text.count('class="bar"') == 9
    slots = {o.slot for o in run.outcomes}
    assert text.count('class="lane"') == len(slots) >= 2
    assert "for the report" in text
    # Self-contained: no scripts, stylesheets or images fetched from anywhere.
    assert "<script" not in text and "src=" not in text and "<link" not in text


def test_second_ctrl_c_kills_at_once_without_waiting_for_the_grace(stack: Stack,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "stubborn.py"
    path.write_text(SCRIPT.format(n=4, task="stubborn", seconds=120, devices=[])
                    .replace("grace=2", "grace=60"))
    env = {**child_env(stack.settings), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.startswith("labq: run "):  # the run's id, announced on stderr
        line = proc.stdout.readline()
    run_id = line.split()[1]
    client = redis.Redis.from_url(stack.settings.broker_url)
    deadline = time.monotonic() + 30
    while client.hlen(f"labq:run:{run_id}:started") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    first = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - first < 15  # far below the 60 s grace
    statuses = json.loads(out.split("OUTCOMES", 1)[1])
    assert statuses == ["cancelled"] * 4


def test_a_tasks_own_limits_apply_and_are_checked(app: LabqCelery) -> None:
    own = app.tasks["tasks.diag.sleep"]
    own.soft_time_limit, own.time_limit = 50.0, 40.0  # as a broken decorator would set
    try:
        with labq.Run("own", app=app, progress=False) as run, pytest.raises(
                labq.TimeLimitError, match=r"soft_time_limit=50\.0.*time_limit=40\.0"):
            run.submit(diag.sleep, seconds=0)
    finally:
        own.soft_time_limit = own.time_limit = None


def test_a_task_the_workers_do_not_know_says_which_and_what_to_do(app: LabqCelery) -> None:
    # Known to this client only: as a module added after the workers started.
    @app.task(name="tasks.added_later.hello", shared=False)
    def hello() -> str:
        return "hello"

    with labq.Run("late-module", app=app, progress=False) as run:
        for _ in range(3):
            run.submit("tasks.added_later.hello")
    outcome = run.outcomes[0]
    assert len({o.error.message for o in run.outcomes if o.error}) == 1  # one answer for all
    assert outcome.status is labq.Status.FAILED
    assert outcome.error is not None and outcome.error.type == "NotRegistered"
    message = outcome.error.message
    assert "task 'tasks.added_later.hello' is not registered on the workers" in message
    assert all(node in message for node in ("lab-a", "lab-b")), message
    assert "Restart the workers" in message
