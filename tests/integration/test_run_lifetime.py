"""Runs that outlive everyone (issue 16): a dead worker's tasks settled with
no testscript alive (labq.worker.reaper), and a run's keys gone after
``run_retention`` (labq.keys). Each test has workers of its own, on another
database of the session's Redis (``side_workers``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

import labq
from conftest import recorded, side_workers
from faults import kill_tree
from labq.app import create_app
from labq.devices.lease import Leases
from labq.embedded.stack import Stack
from labq.keys import RESULT_PREFIX, running_key, starts_key
from labq.ops.run_list import run_rows
from tasks import diag

ROOT = Path(__file__).resolve().parents[2]
#: The acceptance bound, at the default heartbeat TTL (10 s).
SETTLED_WITHIN = 30.0

#: Two device tasks that may not run twice and two that may, on four slots;
#: prints its run id and task ids once all four run, then waits to be killed.
SCRIPT = textwrap.dedent("""
    import sys, time
    import labq
    from tasks import diag
    run = labq.Run("orphaned", progress=False, logs=False)
    ids = [run.submit(diag.hold_device, device=d, seconds=4) for d in ("l1", "l2")]
    ids += [run.submit(diag.nap, seconds=4, pidfile=sys.argv[1] + str(i)) for i in range(2)]
    while sum(o.status is labq.Status.RUNNING and bool(o.worker) for o in run.outcomes) < 4:
        run.refresh()
        time.sleep(0.05)
    print(run.id, *ids, flush=True)
    sys.stdin.readline()
""")


def final_meta(client: redis.Redis, task_id: str) -> dict[str, object] | None:
    raw = client.get(f"{RESULT_PREFIX}{task_id}")
    meta = json.loads(raw) if raw else None
    return meta if meta and meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED") else None


def test_a_dead_workers_tasks_are_settled_with_no_testscript_alive(
        stack: Stack, tmp_path: Path) -> None:
    with side_workers(stack, 3, ["orphan-w1", "orphan-w2"], tmp_path) as side:
        assert side.settings.worker_ttl == 10.0  # the default: the bound is the issue's
        client = redis.Redis.from_url(side.settings.broker_url)
        env = {**os.environ, **side.settings.to_env(), "PYTHONPATH": str(ROOT)}
        pidfiles = str(tmp_path / "nap")
        script = subprocess.Popen([sys.executable, "-c", SCRIPT, pidfiles], cwd=ROOT, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert script.stdout is not None
        run_id, *ids = script.stdout.readline().split()
        script.send_signal(signal.SIGKILL)
        script.wait(timeout=10)
        starts = {t: json.loads(raw)["worker"] for t, raw in
                  ((t, client.hget(starts_key(run_id), t)) for t in ids)}
        victim = side.node("orphan-w1")
        doomed = [t for t in ids if starts[t] == victim]
        assert len(doomed) == 2, starts
        kill_tree(side.workers["orphan-w1"].pid)
        killed_at = time.monotonic()

        # Nobody gathers: the surviving worker settles the dead one's tasks.
        device_of = {ids[0]: "l1", ids[1]: "l2"}
        settled: dict[str, dict[str, object]] = {}
        while len(settled) < len(doomed):
            assert time.monotonic() - killed_at < SETTLED_WITHIN, (settled, doomed)
            for t in doomed:
                meta = final_meta(client, t)
                if meta is not None and t not in settled:
                    settled[t] = meta
                    held = {d.device for d in Leases(client).snapshot() if d.holders}
                    assert device_of.get(t) not in held, f"{device_of[t]}: lease not freed"
            time.sleep(0.2)
        print(f"settled in {time.monotonic() - killed_at:.1f} s")
        assert not client.hlen(running_key(victim)), "the dead worker's entries stay"

        # Then a testscript attaches and gathers all four, in submit order.
        app = create_app(side.settings)
        run = labq.Run.attach(run_id, app=app, progress=False, logs=False)
        try:
            outcomes = run.wait(timeout=60)
        finally:
            run.close()
            app.close()
        # labq runs counts four tasks: the rerun takes its first's place.
        (row,) = run_rows(client)
        assert row["tasks"] == 4 and row["counts"]["lost"] == 1, row
        assert row["counts"]["succeeded"] == 3 and row["counts"]["queued"] == 0, row
    by_old = dict(zip(ids, outcomes, strict=True))
    for task_id in ids:
        outcome, meta = by_old[task_id], settled.get(task_id)
        if task_id not in doomed:
            assert outcome.status is labq.Status.SUCCEEDED, outcome
        elif outcome.task == "tasks.diag.hold_device":  # may not run twice: lost
            assert outcome.status is labq.Status.LOST and outcome.task_id == task_id, outcome
            assert outcome.error is not None and victim in outcome.error.message
            assert meta is not None and "labq_rerun" not in meta
        else:  # idempotent: ran once more, on the worker that lives
            assert meta is not None and meta["labq_rerun"] == outcome.task_id, meta
            assert run.reruns[task_id] == outcome.task_id
            assert outcome.status is labq.Status.SUCCEEDED, outcome
            assert outcome.worker == side.node("orphan-w2"), outcome
    naps = [recorded(Path(f"{pidfiles}{i}")) for i in range(2)]
    assert all(len(n.get("end", [])) == 1 and len(n.get("start", [])) <= 2 for n in naps), naps
    assert [o.task for o in outcomes] == ["tasks.diag.hold_device"] * 2 + ["tasks.diag.nap"] * 2


def test_a_run_past_its_retention_leaves_no_key(stack: Stack, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with side_workers(stack, 4, ["keeper"], tmp_path, run_retention="3s") as side:
        assert side.settings.run_retention == 3.0
        client = redis.Redis.from_url(side.settings.broker_url)
        app = create_app(side.settings)
        try:
            with labq.Run("brief", app=app, progress=False, logs=True) as run:
                ids = [run.submit(diag.sleep, seconds=0.2), run.submit(diag.echo, value=1),
                       run.submit(diag.fail, message="kept a while")]
            cancelled = labq.Run("stopped", app=app, progress=False)
            ids.append(cancelled.submit(diag.sleep, seconds=30))
            cancelled.cancel(grace=0)
            cancelled.close()
            assert "sleeping 0.2 s" in capsys.readouterr().err  # the log stream existed
            runs = [run.id, cancelled.id]
            named = [k for k in client.scan_iter(count=1000)
                     if any(r.encode() in k or t.encode() in k for r in runs for t in ids)]
            assert len(named) >= 10, named  # info, tasks, starts, states, done, log, results...
            time.sleep(4.5)
            left = [k for k in client.scan_iter(count=1000)
                    if any(r.encode() in k or t.encode() in k for r in runs for t in ids)]
            assert left == [], left
            with pytest.raises(labq.UnknownRun, match=r"kept 3 s"):
                labq.Run.attach("brief", app=app, progress=False)
        finally:
            app.close()
            client.close()
