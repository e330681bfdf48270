"""Fair share under faults: a worker SIGKILLed while it dispatches, the
submitting client SIGKILLed mid-submit, Redis restarted mid-run.

The backlogs and the queue lists are moved between by atomic scripts only,
so in each case every task submitted runs once or (stopped by the fault
itself, as without fair share) ends with a final status, and none runs
twice: ``tasks.diag.tally`` appends its task id to a file each time it
completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

import labq
from conftest import stack_settings
from faults import kill_tree, restart_redis
from labq.embedded.stack import Stack, WorkerSpec, node_name
from labq.fairshare.backlogs import Backlogs
from labq.keys import starts_key
from tasks import diag

TTL = 3.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[Stack]:
    """Two workers of two slots on the default queue, a short heartbeat TTL, AOF on."""
    settings = stack_settings(tmp_path, concurrency=2, worker_ttl=TTL)
    workers = (WorkerSpec("w1", ("labq",)), WorkerSpec("w2", ("labq",)))
    s = Stack(settings, workers=workers, with_flower=False, with_sim=False).start()
    yield s
    s.stop()


def tallied(path: Path) -> Counter[str]:
    """How many times each task id completed."""
    return Counter(path.read_text().split()) if path.exists() else Counter()


def wait_drained(client: redis.Redis, run_id: str, timeout: float = 60.0) -> None:
    """Until ``run_id`` has nothing left in any backlog."""
    end = time.monotonic() + timeout
    while any(w.run_id == run_id for w in Backlogs(client).waiting()):
        assert time.monotonic() < end, Backlogs(client).waiting()
        time.sleep(0.1)


def test_a_worker_killed_while_it_dispatches_loses_and_doubles_nothing(
        lab: Stack, tmp_path: Path) -> None:
    path = tmp_path / "tally"
    settings = lab.settings
    client = redis.Redis.from_url(settings.broker_url)
    with labq.Run("victim-a", settings=settings, progress=False, logs=False) as a, \
            labq.Run("victim-b", settings=settings, progress=False, logs=False) as b:
        a.submit_many(diag.tally, [{"seconds": 0.4, "path": str(path)}] * 40)
        b.submit_many(diag.tally, [{"seconds": 0.4, "path": str(path)}] * 20)
        # Kill w1 between its tasks' starts and ends (its children all run),
        # while ends and sweeps on both workers keep dispatching.
        victim = node_name("w1")
        end = time.monotonic() + 30
        while True:
            assert time.monotonic() < end, "w1 never ran two tasks at once"
            records = [json.loads(r) for r in client.hvals(starts_key(a.id))
                       + client.hvals(starts_key(b.id))]
            ages = [time.time() - r["at"] for r in records if r["worker"] == victim]
            running = [x for x in ages if x < 0.4]
            if len(tallied(path)) >= 8 and len(running) == 2 and min(running) > 0.1:
                break
            time.sleep(0.01)
        kill_tree(lab.processes["w1"].pid)
        outcomes = a.wait(timeout=120) + b.wait(timeout=120)
    assert len(outcomes) == 60
    # The two it ran were lost with it and ran again once on w2 (tally is idempotent).
    assert len(a.reruns) + len(b.reruns) == 2, (a.reruns, b.reruns)
    assert all(o.status is labq.Status.SUCCEEDED for o in outcomes), outcomes
    counts = tallied(path)
    assert set(counts) == {o.task_id for o in outcomes}
    assert set(counts.values()) == {1}, [t for t, n in counts.items() if n > 1]
    assert not Backlogs(client).waiting()
    client.close()


SUBMITTER = textwrap.dedent("""
    import sys
    import labq
    from tasks import diag
    run = labq.Run("killed-client", progress=False, logs=False)
    print(run.id, flush=True)
    for _ in range(2000):
        print(run.submit(diag.tally, seconds=0.02, path=sys.argv[1]), flush=True)
    run.close()
""")


def test_a_client_killed_mid_submit_loses_and_doubles_nothing(
        lab: Stack, tmp_path: Path) -> None:
    path = tmp_path / "tally"
    env = {**os.environ, **lab.settings.to_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SUBMITTER, str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    printed: list[str] = []
    while len(printed) < 300:
        line = proc.stdout.readline()
        assert line, "the submitter ended early"
        printed.append(line.strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    printed += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    assert len(printed) < 2000, "killed too late: every task was submitted"
    client = redis.Redis.from_url(lab.settings.broker_url)
    wait_drained(client, run_id)
    # The last submits' tasks are still running or on the queue.
    end = time.monotonic() + 60
    while len(tallied(path)) < len(printed) and time.monotonic() < end:
        time.sleep(0.1)
    time.sleep(0.5)
    counts = tallied(path)
    assert set(printed) <= set(counts), "a submitted task never ran"
    assert len(set(counts) - set(printed)) <= 1  # the one in flight at the kill, at most
    assert set(counts.values()) == {1}, [t for t, n in counts.items() if n > 1]
    assert client.llen("labq") == 0
    client.close()


def test_a_redis_restart_mid_run_loses_no_backlog_and_doubles_nothing(
        lab: Stack, tmp_path: Path) -> None:
    path = tmp_path / "tally"
    settings = lab.settings
    record: dict[str, datetime] = {}
    with labq.Run("restart-a", settings=settings, progress=False, logs=False) as a, \
            labq.Run("restart-b", settings=settings, progress=False, logs=False,
                     priority="high") as b:
        a.submit_many(diag.tally, [{"seconds": 0.3, "path": str(path)}] * 40)
        b.submit_many(diag.tally, [{"seconds": 0.3, "path": str(path)}] * 10)
        # Redis goes down with both backlogs mid-dispatch: b's high tasks first.
        restarter = threading.Thread(target=restart_redis, args=(lab, 6, a.id, 2.0, record))
        restarter.start()
        try:
            outcomes = a.wait(timeout=180) + b.wait(timeout=180)
        finally:
            restarter.join()
    assert "back" in record, "Redis was not restarted"
    assert len(outcomes) == 50
    # Running at the restart: cancelled by Celery (as without fair share), or done.
    # Redis answers a last command or two after its SIGTERM, so a task can
    # start then and be cancelled too: "later" counts from Redis's return.
    assert {o.status for o in outcomes} <= {labq.Status.SUCCEEDED, labq.Status.CANCELLED}
    later = [o for o in outcomes if o.started_at is None or o.started_at > record["back"]]
    assert len(later) >= 30, f"only {len(later)} tasks were still waiting at Redis's return"
    assert all(o.status is labq.Status.SUCCEEDED for o in later), later
    counts = tallied(path)
    succeeded = {o.task_id for o in outcomes if o.status is labq.Status.SUCCEEDED}
    assert succeeded <= set(counts)
    assert set(counts.values()) == {1}, [t for t, n in counts.items() if n > 1]
    client = redis.Redis.from_url(settings.broker_url)
    assert not Backlogs(client).waiting()
    client.close()
