"""Flower over plain HTTP: basic auth on the API, Prometheus text on ``/metrics``."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message

import pytest

import labq
from labq.app import LabqCelery
from labq.embedded.stack import Stack
from tasks import device


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def credentials(stack: Stack) -> dict[str, str]:
    return basic(stack.settings.flower_user, stack.settings.flower_password)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, str]:
    """GET ``url``; the status, headers (case-insensitive) and body, also for an HTTP error."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read().decode(errors="replace")


def test_api_workers_lists_both_workers_with_credentials(stack: Stack) -> None:
    status, headers, body = get(f"{stack.flower_url}/api/workers?refresh=1", credentials(stack))

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    workers = json.loads(body)
    for node in stack.node_names:
        assert node in workers, f"{node} missing from /api/workers: {sorted(workers)}"
        # Each entry carries the worker's inspect replies: it is the real prefork pool.
        pool = workers[node]["stats"]["pool"]
        assert pool["implementation"] == "celery.concurrency.prefork:TaskPool"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param(basic("labq", "not-the-password"), id="wrong-password"),
        pytest.param(basic("intruder", "x"), id="wrong-user"),
        pytest.param({"Authorization": "Bearer abc"}, id="not-basic"),
    ],
)
@pytest.mark.parametrize("path", ["/api/workers", "/", "/tasks"])
def test_flower_refuses_requests_without_valid_credentials(
    stack: Stack, path: str, headers: dict[str, str]
) -> None:
    status, _, body = get(stack.flower_url + path, headers)

    assert status == 401
    for node in stack.node_names:
        assert node not in body


def test_dashboard_asks_the_browser_for_basic_auth(stack: Stack) -> None:
    status, headers, _ = get(stack.flower_url + "/")

    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Basic")


def test_metrics_serve_prometheus_text_with_flower_metrics(stack: Stack, app: LabqCelery) -> None:
    result = app.send_task("tasks.diag.echo", kwargs={"value": "metrics"})
    assert result.get(timeout=30) == "metrics"

    wanted = [f'flower_worker_online{{worker="{node}"}} 1.0' for node in stack.node_names]
    wanted.append('type="task-succeeded"')
    deadline = time.monotonic() + 15
    while True:
        status, headers, body = get(stack.flower_url + "/metrics", credentials(stack))
        assert status == 200
        missing = [w for w in wanted if w not in body]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert headers["Content-Type"].startswith("text/plain")
    assert not missing, f"/metrics lacks {missing}"
    # Prometheus exposition format: HELP and TYPE lines for Flower's own metrics.
    assert "# TYPE flower_events_total counter" in body
    assert "# HELP flower_worker_online" in body
    events = [
        line
        for line in body.splitlines()
        if line.startswith("flower_events_total{") and 'task="tasks.diag.echo"' in line
    ]
    assert any('type="task-succeeded"' in line for line in events), events
    for line in events:
        value = float(line.rsplit(" ", 1)[1])
        assert value >= 1.0


def test_flower_filters_a_runs_tasks_by_run_id_and_device(stack: Stack, app: LabqCelery) -> None:
    with labq.Run("flower-filter", app=app, progress=False) as run:
        run.submit(device.execute, device="a5", command="show version")
        run.submit(device.execute, device="b5", command="show version")
    query = urllib.parse.quote(f"kwargs:labq_run={run.id}")
    deadline = time.monotonic() + 20
    while True:
        found = json.loads(stack.flower_get(f"/api/tasks?search={query}"))
        if len(found) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(found) == {o.task_id for o in run.outcomes}
    by_device = json.loads(stack.flower_get(
        "/api/tasks?search=" + urllib.parse.quote(f"kwargs:labq_run={run.id} kwargs:device=a5")))
    assert [t["kwargs"] for t in by_device.values()] and len(by_device) == 1
