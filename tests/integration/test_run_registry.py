"""The run registry (issue 16, first part): runs found again after their
testscript is gone, by ``labq.Run.attach``, ``labq attach``, ``labq report``
and ``labq runs``, on the session stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import labq
from conftest import Ran
from labq.app import LabqCelery
from labq.embedded.stack import Stack
from tasks import diag

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    import labq
    from tasks import diag
    run = labq.Run("orphan", owner="nightly-bot", progress=False, logs=False)
    print(run.id, flush=True)
    for i in range(50):
        print(run.submit(diag.nap, seconds=0.05 * (i % 4)), flush=True)
    sys.stdin.readline()  # killed here, mid-run
""")


@pytest.fixture()
def labq_cli(labq_cli_in_process: Callable[..., Ran]) -> Callable[..., Ran]:
    return labq_cli_in_process


def test_a_killed_testscripts_run_is_gathered_and_reported_from_elsewhere(
        stack: Stack, app: LabqCelery, tmp_path: Path, labq_cli: Callable[..., Ran]) -> None:
    env = {**os.environ, **stack.settings.to_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    ids = [proc.stdout.readline().strip() for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    # A unique start of the id is enough; the outcomes come in submit order.
    run = labq.Run.attach(run_id[:-3], app=app, progress=False, logs=False)
    try:
        assert (run.id, run.name, run.owner) == (run_id, "orphan", "nightly-bot")
        outcomes = run.wait(timeout=120)
    finally:
        run.close()
    assert [o.task_id for o in outcomes] == ids
    assert all(o.status is labq.Status.SUCCEEDED for o in outcomes), outcomes[:3]
    assert all(o.task == "tasks.diag.nap" and o.worker and o.queued_at for o in outcomes)
    assert [o.value["slept"] for o in outcomes] == [0.05 * (i % 4) for i in range(50)]
    # Another handle sees the very same outcomes.
    again = labq.Run.attach(run_id, app=app, progress=False, logs=False)
    try:
        assert again.outcomes == outcomes
    finally:
        again.close()

    out = labq_cli(tmp_path, "report", run_id, "-o", str(tmp_path / "r.html"))
    assert out.returncode == 0, out.stderr
    assert "50 tasks, 50 ended" in out.stdout
    html = (tmp_path / "r.html").read_text()
    assert run_id in html and html.count("tasks.diag.nap</td>") == 50
    assert '<td class="num">50</td>' in html  # the summary: 50 succeeded

    listed = json.loads(labq_cli(tmp_path, "runs", "--owner", "nightly-bot", "--json").stdout)
    (row,) = [r for r in listed if r["id"] == run_id]
    assert row["state"] == "open"  # its testscript never closed it
    assert row["tasks"] == 50 and row["counts"]["succeeded"] == 50
    assert row["counts"]["queued"] == 0


def test_runs_lists_newest_first_and_filters_by_owner_and_state(
        app: LabqCelery, tmp_path: Path, labq_cli: Callable[..., Ran]) -> None:
    with labq.Run("listed-a", app=app, owner="ana", progress=False, logs=False) as a:
        a.submit_many(diag.echo, [{"value": i} for i in range(3)])
    with labq.Run("listed-b", app=app, owner="bob", progress=False, logs=False) as b:
        b.submit(diag.echo, 1)
        b.cancel()
    every = json.loads(labq_cli(tmp_path, "runs", "--json").stdout)
    ids = [r["id"] for r in every]
    assert ids.index(b.id) < ids.index(a.id)  # newest first
    mine = json.loads(labq_cli(tmp_path, "runs", "--owner", "ana", "--json").stdout)
    assert {r["owner"] for r in mine} == {"ana"} and a.id in [r["id"] for r in mine]
    (row,) = [r for r in mine if r["id"] == a.id]
    assert set(row) >= {"id", "name", "owner", "priority", "state", "host", "pid", "script",
                        "started_at", "ended_at", "tasks", "counts"}
    assert row["state"] == "done" and row["counts"]["succeeded"] == 3 and row["ended_at"]
    cancelled = json.loads(labq_cli(tmp_path, "runs", "--state", "cancelled", "--json").stdout)
    assert b.id in [r["id"] for r in cancelled] and a.id not in [r["id"] for r in cancelled]
    assert json.loads(labq_cli(tmp_path, "runs", "--since", "1h", "--json").stdout)
    table = labq_cli(tmp_path, "runs").stdout
    assert "listed-a-" in table and "listed-b-" in table and "succeeded" in table, table
    bad = labq_cli(tmp_path, "runs", "--since", "soon")
    assert bad.returncode == 2 and "--since='soon'" in bad.stderr
    unknown = labq_cli(tmp_path, "attach", "no-such-run")
    assert unknown.returncode == 2 and "no run's id starts with 'no-such-run'" in unknown.stderr


DETACHED = textwrap.dedent("""
    import labq
    from tasks import diag
    with labq.Run("left", detach=True, progress=False, logs=False) as run:
        ids = run.submit_many(diag.nap, [{"seconds": 3}] * 6)
        print(run.id, *ids, flush=True)
""")


def test_a_detached_run_goes_on_and_is_gathered_by_attach(
        stack: Stack, app: LabqCelery, tmp_path: Path, labq_cli: Callable[..., Ran]) -> None:
    env = {**os.environ, **stack.settings.to_env(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", DETACHED], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    run_id, *ids = done.stdout.split()
    assert f"'labq attach {run_id}'" in done.stderr, done.stderr
    # It left at once: six 3 s tasks were not waited for.
    handle = labq.Run.attach(run_id, app=app, progress=False, logs=False)
    handle.close()
    assert [o.task_id for o in handle.outcomes] == ids
    assert not all(o.status.final for o in handle.outcomes), handle.outcomes
    out = labq_cli(tmp_path, "attach", run_id)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("succeeded") == 6 and '"slept": 3' in out.stdout, out.stdout
    listed = json.loads(labq_cli(tmp_path, "runs", "--json").stdout)
    (row,) = [r for r in listed if r["id"] == run_id]
    assert row["state"] == "open" and row["counts"]["succeeded"] == 6
