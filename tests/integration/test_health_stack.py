"""Device health on the session stack: ``labq maintenance / resume / retire
/ health``, tasks for a blocked device failing at once with
``DeviceUnavailable``, and a property test of many tasks of several runs
while devices go in and out of maintenance, checked against the simulated
lab's own session accounting."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import labq
from conftest import PROP_DEVICES, Ran
from labq.app import LabqCelery
from labq.devices.health import Health, HealthBook
from labq.embedded.stack import Stack
from tasks import diag, topology


@pytest.fixture()
def labq_cli(labq_cli_in_process: Callable[..., Ran]) -> Callable[..., Ran]:
    return labq_cli_in_process


@pytest.fixture()
def book(stack: Stack) -> Any:
    client = redis.Redis.from_url(stack.settings.broker_url)
    yield HealthBook(client)
    for name in client.hkeys("labq:health"):  # leave every device good for the next test
        HealthBook(client).set(name.decode(), Health.GOOD, reason="test cleanup", by="tests")
    client.close()


def test_maintenance_lets_the_holder_finish_then_refuses_and_resume_restores(
        app: LabqCelery, tmp_path: Path, labq_cli: Callable[..., Ran], book: Any) -> None:
    with labq.Run("rma", app=app, progress=False, logs=False) as run:
        holder = run.submit(diag.hold_device, device="f7", seconds=2)
        deadline = time.monotonic() + 30
        while not any(o.status is labq.Status.RUNNING and o.worker for o in run.outcomes):
            assert time.monotonic() < deadline, run.outcomes
            run.refresh()
            time.sleep(0.05)
        out = labq_cli(tmp_path, "maintenance", "f7", "--note", "RMA 4711", "--by", "ana")
        assert out.returncode == 0, out.stderr
        assert f"1 holder(s) finish first ({holder})" in out.stdout, out.stdout
        assert "fail at once with DeviceUnavailable" in out.stdout
        started = time.monotonic()
        refused = run.submit(diag.hold_device, device="f7", seconds=0)
        outcome = next(o for o in run.as_completed(timeout=60) if o.task_id == refused)
        assert time.monotonic() - started < 5, "not refused at once"
    by_id = {o.task_id: o for o in run.outcomes}
    assert by_id[holder].status is labq.Status.SUCCEEDED  # it finished its work
    assert outcome.status is labq.Status.FAILED and outcome.error is not None
    assert outcome.error.type == "DeviceUnavailable"
    for part in ("'f7'", "maintenance", "by ana", "RMA 4711"):
        assert part in outcome.error.message, outcome.error.message

    listed = json.loads(labq_cli(tmp_path, "devices", "--json").stdout)
    (row,) = [r for r in listed if r["device"] == "f7"]
    assert row["health"]["state"] == "maintenance" and row["health"]["reason"] == "RMA 4711"
    assert labq_cli(tmp_path, "resume", "f7", "--by", "ana").returncode == 0
    with labq.Run("back", app=app, progress=False, logs=False) as run:
        run.submit(diag.hold_device, device="f7", seconds=0)
    assert run.outcomes[0].status is labq.Status.SUCCEEDED
    shown = json.loads(labq_cli(tmp_path, "health", "f7", "--json").stdout)
    assert [h["state"] for h in shown[0]["history"]][:2] == ["good", "maintenance"]
    bad = labq_cli(tmp_path, "maintenance", "f7x", "--note", "x")
    assert bad.returncode == 2 and "f7x" in bad.stderr and "f7" in bad.stderr


HOLD = 0.1
#: The property lab's devices, by role: what Picks choose from.
ROLES = {role: sorted(n for n, (_, r) in PROP_DEVICES.items() if r == role)
         for role in ("p-leaf", "p-spine")}
QUEUE_OF = {n: q for n, (q, _) in PROP_DEVICES.items()}


def test_runs_never_touch_a_device_in_maintenance_and_lose_nothing(
        stack: Stack, app: LabqCelery, book: Any) -> None:
    """Three runs, 180 tasks (by name and by Pick, in conflicting orders),
    while a thread puts devices in and out of maintenance. Each task ends
    succeeded, or failed with DeviceUnavailable naming a device that was in
    maintenance during its life; the sim saw no session open on a device
    more than the grace after it went into maintenance, and never more
    sessions than it allows."""
    assert stack.sim is not None
    rnd = random.Random(int.from_bytes(b"health", "big"))
    names = sorted(PROP_DEVICES)
    windows: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            device = rnd.choice(names)
            set_at = time.time()
            book.set(device, Health.MAINTENANCE, reason="property", by="flipper")
            stop.wait(rnd.uniform(0.5, 1.5))
            resumed = time.time()
            book.set(device, Health.GOOD, reason="property", by="flipper")
            windows[device].append((set_at, resumed))
            stop.wait(rnd.uniform(0.1, 0.3))

    stack.sim.reset()
    flipper = threading.Thread(target=flip, daemon=True)
    runs = [labq.Run(f"health-prop-{i}", app=app, progress=False, logs=False) for i in range(3)]
    flipper.start()
    try:
        for i, run in enumerate(runs):
            for _ in range(60):
                if rnd.random() < 0.6:
                    order = names if i % 2 == 0 else names[::-1]
                    run.submit(topology.hold, device=rnd.choice(order), seconds=HOLD)
                else:
                    run.submit(topology.hold, device=labq.Pick(role=rnd.choice(sorted(ROLES))),
                               seconds=HOLD)
        outcomes = [o for run in runs for o in run.wait(timeout=300)]
    finally:
        stop.set()
        flipper.join()
        for run in runs:
            run.close()
    refused = [o for o in outcomes if o.status is labq.Status.FAILED]
    assert all(o.status is labq.Status.SUCCEEDED or (
        o.error is not None and o.error.type == "DeviceUnavailable") for o in outcomes), [
        (o.status, o.error) for o in outcomes if o not in refused and not o.ok][:3]
    assert len(outcomes) == 180 and any(o.ok for o in outcomes)
    flips = sum(len(w) for w in windows.values())
    print(f"{flips} maintenance windows, {len(refused)} of 180 tasks refused")
    assert flips >= 2
    for o in refused:
        assert o.error is not None and "maintenance" in o.error.message
    # The sim's own accounting: nobody opened a session on a device in
    # maintenance after the grace (a lease granted just before the change
    # still connects), and no device ever exceeded its sessions.
    grace = 1.0
    state = stack.sim.state(events=True)
    for name in names:
        dev = state[name]
        assert dev["peak"] <= 1, (name, dev["peak"])
        opens = [e["t"] for e in dev["events"] if e["event"] == "open"]
        for start, end in windows[name]:
            late = [t for t in opens if start + grace < t < end]
            assert not late, f"{name}: sessions opened at {late} in maintenance {start}-{end}"


def test_a_failed_check_makes_a_device_bad_and_a_passing_one_good_again(
        stack: Stack, app: LabqCelery, tmp_path: Path, labq_cli: Callable[..., Ran],
        book: Any) -> None:
    assert stack.sim is not None
    stack.sim.set_faults("f20", unreachable=True)
    try:
        out = labq_cli(tmp_path, "health", "f20", "--check")
        assert out.returncode == 0, out.stderr
        assert "f20: health check" in out.stdout and "failed: DeviceUnreachable" in out.stdout
        (now,) = json.loads(labq_cli(tmp_path, "health", "f20", "--json").stdout)
        assert now["state"] == "bad" and "DeviceUnreachable" in now["reason"], now
        assert now["by"]  # the check's task id
        with labq.Run("after-bad", app=app, progress=False, logs=False) as run:
            run.submit(diag.hold_device, device="f20", seconds=0)
        (refused,) = run.outcomes
        assert refused.error is not None and refused.error.type == "DeviceUnavailable"
        assert "bad" in refused.error.message and "DeviceUnreachable" in refused.error.message
    finally:
        stack.sim.clear_faults("f20")
    out = labq_cli(tmp_path, "health", "f20", "--check")
    assert "f20: health check" in out.stdout and "passed" in out.stdout, out.stdout
    (now,) = json.loads(labq_cli(tmp_path, "health", "f20", "--json").stdout)
    assert now["state"] == "good" and [h["state"] for h in now["history"]][:2] == ["good", "bad"]
    with labq.Run("after-good", app=app, progress=False, logs=False) as run:
        run.submit(diag.hold_device, device="f20", seconds=0)
    assert run.outcomes[0].ok, run.outcomes
    # A person's maintenance stays whatever a check finds.
    assert labq_cli(tmp_path, "maintenance", "f20", "--note", "swap").returncode == 0
    out = labq_cli(tmp_path, "health", "f20", "--check")
    assert "passed" in out.stdout, out.stdout
    (now,) = json.loads(labq_cli(tmp_path, "health", "f20", "--json").stdout)
    assert now["state"] == "maintenance" and now["reason"] == "swap"
