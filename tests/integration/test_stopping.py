"""Stopping a testscript: Ctrl-C, SIGTERM and ``labq cancel`` from another shell,
against real testscript subprocesses, real workers and the simulated lab."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis
from celery.states import READY_STATES

import labq
from conftest import FREE_DEVICES
from labq.app import LabqCelery
from labq.devices.lease import Leases
from labq.embedded.stack import Stack, child_env
from labq.keys import RESULT_PREFIX, UNACKED_KEY, starts_key
from tasks import diag

SCRIPT = textwrap.dedent("""
    import json
    import labq
    from tasks import diag
    settings = labq.Settings.load()
    with labq.Run({name!r}, settings=settings, progress=False, grace=2,
                  report={report!r}) as run:
        for device in {devices!r}:
            run.submit(diag.hold_device, device=device, seconds=60)
        print("SUBMITTED", run.id, flush=True)
        run.wait()
    print("OUTCOMES", json.dumps([o.status.value for o in run.outcomes]), flush=True)
""")


class Script:
    """A testscript subprocess whose output lines are timestamped as they come."""

    def __init__(self, stack: Stack, tmp_path: Path, name: str, devices: list[str]) -> None:
        self.report = tmp_path / f"{name}.html"
        path = tmp_path / f"{name}.py"
        path.write_text(SCRIPT.format(name=name, devices=devices, report=str(self.report)))
        env = {**child_env(stack.settings), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in self.lines:
                if line.startswith(prefix):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line starting {prefix!r} in:\n{self.text}")

    def finish(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def wait_started(client: redis.Redis, run_id: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.hlen(starts_key(run_id)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.hlen(starts_key(run_id)) >= count


def assert_nothing_left(stack: Stack, client: redis.Redis, run_id: str, devices: list[str],
                        since: float) -> None:
    """No task of the run runs, no lease is held and no simulated session is
    open, within the cancel's 2 s grace and a margin. Read from Redis and the
    sim alone (a remote-control broadcast from this process would leave
    kombu's threads behind in the forks of later tests)."""
    assert stack.sim is not None
    deadline = since + 8
    running: list[str] = []
    while time.monotonic() < deadline:
        started = [t.decode() for t in client.hkeys(starts_key(run_id))]
        results = client.mget([RESULT_PREFIX + t for t in started]) if started else []
        running = [t for t, raw in zip(started, results, strict=True)
                   if not raw or json.loads(raw).get("status") not in READY_STATES]
        unacked = [m for m in client.hvals(UNACKED_KEY) if run_id.encode() in m]
        held = [d.device for d in Leases(client).snapshot() if d.device in devices and d.holders]
        sessions = [d for d in devices if stack.sim.state(d, events=False)["sessions"]]
        if not running and not unacked and not held and not sessions:
            return
        time.sleep(0.2)
    raise AssertionError(f"still running {running}, leases on {held}, sessions on {sessions}")


@pytest.mark.parametrize(("sig", "status", "said"), [(signal.SIGINT, 130, "Ctrl-C"),
                                                     (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_cancels_says_so_prints_the_table_and_exits(
        stack: Stack, tmp_path: Path, sig: signal.Signals, status: int,
        said: str) -> None:
    devices = FREE_DEVICES[:24] if sig == signal.SIGINT else FREE_DEVICES[24:40]
    client = redis.Redis.from_url(stack.settings.broker_url)
    script = Script(stack, tmp_path, f"stop-{said.lower()}", devices)
    run_id = script.wait_for("SUBMITTED").split()[1]
    wait_started(client, run_id, 4)
    script.proc.send_signal(sig)
    sent = time.monotonic()
    said_line = script.wait_for(f"{said}: cancelling run", timeout=5)
    said_at = next(at for at, line in script.lines if line == said_line)
    assert said_at - sent < 1.0, said_line
    assert "queued dropped" in said_line and "running interrupted" in said_line
    assert run_id in said_line
    assert script.finish() == status, script.text
    assert "Traceback" not in script.text
    assert f"cancelled by {said}" in script.text  # the results table's title
    assert "OUTCOMES" not in script.text  # the script itself stopped
    assert script.report.exists() and run_id in script.report.read_text()
    assert_nothing_left(stack, client, run_id, devices, sent)


def test_labq_cancel_from_another_shell_stops_a_run_being_gathered(
        stack: Stack, tmp_path: Path) -> None:
    devices = FREE_DEVICES[:20]
    client = redis.Redis.from_url(stack.settings.broker_url)
    script = Script(stack, tmp_path, "remote-cancel", devices)
    run_id = script.wait_for("SUBMITTED").split()[1]
    wait_started(client, run_id, 2)
    env = child_env(stack.settings)
    cli = subprocess.run([sys.executable, "-m", "labq", "cancel", run_id[:-2], "--grace", "2"],
                         capture_output=True, text=True, env=env, timeout=60)
    sent = time.monotonic()
    assert cli.returncode == 0, cli.stderr
    assert f"cancelled run {run_id}:" in cli.stdout
    assert script.finish() == 0, script.text
    outcomes = json.loads(script.wait_for("OUTCOMES").split(" ", 1)[1])
    assert len(outcomes) == len(devices)
    assert set(outcomes) <= {"cancelled", "hard_timeout", "soft_timeout"}
    assert "cancelled" in outcomes
    assert f"run {run_id} was cancelled from another shell" in script.text
    assert_nothing_left(stack, client, run_id, devices, sent)


def test_labq_cancel_names_what_it_cannot_find(stack: Stack) -> None:
    env = child_env(stack.settings)
    cli = subprocess.run([sys.executable, "-m", "labq", "cancel", "no-such-run-"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode == 2
    assert cli.stderr.strip() == ("labq: error: no run's id starts with 'no-such-run-' "
                                  "(runs are kept 7 days)")


def test_an_interrupt_that_the_task_turned_into_another_error_still_counts(
        app: LabqCelery) -> None:
    # paramiko, interrupted while it connects, raises KeyError from its
    # cleanup: the task was interrupted, it did not fail.
    with labq.Run("masked", app=app, progress=False) as run:
        run.submit(diag.masked, soft_time_limit=1, time_limit=10)
    [soft] = run.outcomes
    assert soft.status is labq.Status.SOFT_TIMEOUT, soft
    assert soft.error is not None and "surfaced as KeyError" in soft.error.message
    cancelled = labq.Run("masked-cancel", app=app, progress=False, grace=5)
    try:
        cancelled.submit(diag.masked)
        deadline = time.monotonic() + 30
        while (cancelled.refresh() or True) and cancelled.outcomes[0].status is not \
                labq.Status.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        [outcome] = cancelled.cancel()
        assert outcome.status is labq.Status.CANCELLED, outcome
        assert outcome.error is not None and outcome.error.type == "TaskCancelled"
    finally:
        cancelled.close()


def test_a_hard_timeout_says_what_happened(app: LabqCelery) -> None:
    with labq.Run("hard", app=app, progress=False) as run:
        run.submit(diag.stubborn, soft_time_limit=1, time_limit=3)
    [outcome] = run.outcomes
    assert outcome.status is labq.Status.HARD_TIMEOUT, outcome
    assert outcome.error is not None and outcome.error.type == "TimeLimitExceeded"
    assert outcome.error.message == ("hard time limit (3 s) reached: the task and every "
                                     "process it started were killed"), outcome.error.message
