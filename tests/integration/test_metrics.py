"""The lab's Prometheus metrics (labq.ops.metrics, ``labq exporter``) on the
session stack, parsed with prometheus_client's own parser and compared with
the state read from Redis during a run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import labq
from labq.app import LabqCelery
from labq.devices.health import Health, HealthBook
from labq.devices.lease import Leases
from labq.embedded.stack import Stack, child_env, node_name
from labq.ops.metrics import registry
from labq.ops.run_list import run_rows
from labq.worker.liveness import read_workers
from tasks import diag

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(metric name, sorted labels) -> value, by prometheus_client's parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture()
def client(stack: Stack) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(stack.settings.broker_url)
    yield c
    HealthBook(c).set("f12", Health.GOOD, reason="test cleanup", by="tests")
    c.close()


def test_metrics_match_the_lab_in_redis_during_a_run(stack: Stack, app: LabqCelery,
                                                     client: redis.Redis) -> None:
    HealthBook(client).set("f12", Health.MAINTENANCE, reason="RMA", by="ana")
    with labq.Run("metered", app=app, progress=False, logs=False) as run:
        held = [run.submit(diag.hold_device, device=d, seconds=4) for d in ("f10", "f11")]
        waiter = run.submit(diag.hold_device, device="f10", seconds=0)
        deadline = time.monotonic() + 30
        while (sum(o.status is labq.Status.RUNNING and bool(o.worker) for o in run.outcomes) < 2
               or not Leases(client).waiters("f10")):
            assert time.monotonic() < deadline, run.outcomes
            run.refresh()
            time.sleep(0.05)
        # Worker slots come from the heartbeats (every 2 s): scrape until one
        # has seen both tasks.
        while True:
            got = samples(generate_latest(registry(stack.settings, client)).decode())
            leased = {d.device: d for d in Leases(client).snapshot()}
            beats = {b.hostname: b for b in read_workers(client)}
            (row,) = [r for r in run_rows(client, state="open") if r["id"] == run.id]
            if sum(b.busy for b in beats.values()) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        run.wait(timeout=60)
    assert held and waiter
    for device in ("f10", "f11"):
        assert got[("labq_device_leases", (("device", device),))] == len(leased[device].holders)
        assert got[("labq_device_leases", (("device", device),))] == 1
    assert got[("labq_device_waiters", (("device", "f10"),))] == len(leased["f10"].waiters)
    assert got[("labq_device_leases", (("device", "f13"),))] == 0
    assert got[("labq_device_health", (("device", "f12"), ("state", "maintenance")))] == 1
    assert got[("labq_device_health", (("device", "f13"), ("state", "unknown")))] == 1 or got[
        ("labq_device_health", (("device", "f13"), ("state", "good")))] == 1
    assert got[("labq_queue_consumers", (("queue", "lab-a"),))] == 1
    assert got[("labq_queue_consumers", (("queue", "labq"),))] == 2
    for w in ("lab-a", "lab-b"):
        beat = beats[node_name(w)]
        assert got[("labq_worker_slots", (("state", "busy"), ("worker", beat.hostname)))] in (
            beat.busy, beat.busy - 1, beat.busy + 1)  # a beat may land between the two reads
        assert got[("labq_worker_slots", (("state", "busy"), ("worker", beat.hostname)))] + got[
            ("labq_worker_slots", (("state", "idle"), ("worker", beat.hostname)))] == 8
    assert sum(b.busy for b in beats.values()) >= 2
    # The run's tasks by status, as the registry counts them.
    mine = {dict(k[1])["status"]: v for k, v in got.items()
            if k[0] == "labq_run_tasks" and dict(k[1])["run"] == run.id}
    assert mine == row["counts"] and sum(mine.values()) == 3, (mine, row)
    # The run has ended: it leaves the metrics.
    after = samples(generate_latest(registry(stack.settings, client)).decode())
    assert not [k for k in after if k[0] == "labq_run_tasks" and ("run", run.id) in k[1]]


def test_labq_exporter_serves_metrics_that_parse(stack: Stack) -> None:
    env = {**child_env(stack.settings), "LABQ_EXPORTER_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "labq", "exporter"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("labq exporter: http://127.0.0.1:"), line
        url = line.split()[2]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            got = samples(response.read().decode())
        names = {k[0] for k in got}
        assert {"labq_device_health", "labq_device_leases", "labq_device_waiters",
                "labq_queue_depth", "labq_queue_consumers", "labq_worker_slots"} <= names
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert os.environ.get("LABQ_EXPORTER_PORT") is None


def test_labq_exporter_names_a_busy_port(stack: Stack) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**child_env(stack.settings), "LABQ_EXPORTER_PORT": str(port)}
        done = subprocess.run([sys.executable, "-m", "labq", "exporter"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"labq: error: cannot serve on 127.0.0.1:{port}" in done.stderr, done.stderr


DASHBOARD = ROOT / "deploy" / "grafana" / "labq-lab.json"


def test_the_grafana_dashboard_queries_only_metrics_a_live_scrape_has(
        stack: Stack, client: redis.Redis) -> None:
    import json
    import re

    dashboard = json.loads(DASHBOARD.read_text())  # valid JSON, or this fails
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(p["datasource"]["type"] == "prometheus" for p in dashboard["panels"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    queried = {m for e in exprs for m in re.findall(r"\blabq_[a-z_]+\b", e)}
    # A run is open during the scrape, so that labq_run_tasks has samples too.
    with labq.Run("dashboard", app=None, settings=stack.settings, progress=False,
                  logs=False) as run:
        run.submit(diag.nap, seconds=1)
        scraped = {k[0] for k in samples(generate_latest(
            registry(stack.settings, client)).decode())}
    assert queried and queried <= scraped, queried - scraped
    described = (ROOT / "docs" / "metrics.md").read_text()
    for p in dashboard["panels"]:
        assert p["title"] in described, f"panel {p['title']!r} is not described in docs/metrics.md"
