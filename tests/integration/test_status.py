"""``labq status`` against the session stack: workers, queues, a running
device task, a lease and its waiter, from Redis alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import labq
from conftest import need
from labq import cli
from labq.app import LabqCelery
from labq.devices.lease import Leases
from labq.embedded.ports import free_port
from labq.embedded.stack import Stack
from tasks.device import execute

ROOT = Path(__file__).resolve().parents[2]
#: A queue no worker consumes, so a message there stays put.
IDLE_QUEUE = "status-idle"


def status(stack: Stack, *args: str) -> str:
    clean = {k: None for k in os.environ if k.startswith("LABQ_")}
    result = CliRunner().invoke(cli.main, ["status", *args], catch_exceptions=False,
                                env={**clean, "LABQ_BROKER_URL": stack.settings.broker_url})
    assert result.exit_code == 0, result.output
    return result.output


def status_json(stack: Stack) -> dict[str, Any]:
    return dict(json.loads(status(stack, "--json")))


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not seen in {timeout} s: {what}")
        time.sleep(0.1)


@pytest.fixture()
def client(stack: Stack) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(stack.settings.broker_url)
    yield c
    c.close()


@pytest.fixture()
def idle_message(app: LabqCelery, client: redis.Redis) -> Iterator[str]:
    """One task message waiting in a queue that no worker consumes."""
    result = app.send_task("tasks.diag.echo", kwargs={"value": 1}, queue=IDLE_QUEUE)
    yield result.id
    client.delete(IDLE_QUEUE, f"_kombu.binding.{IDLE_QUEUE}",
                  f"_kombu.binding_permanent.{IDLE_QUEUE}")


def test_status_shows_workers_queues_a_running_task_and_its_lease(
        stack: Stack, client: redis.Redis, idle_message: str) -> None:
    run = labq.Run("status", settings=stack.settings, progress=False, logs=False)
    leases = Leases(client)
    try:
        # `hang` never answers `show version`: the task runs until cancelled.
        task_id = run.submit(execute, device="hang", command="show version")
        wait_for(lambda: leases.holders("hang"), "the task's lease on hang")
        # A second holder in line for the device.
        assert not isinstance(leases.acquire("hang", "status-waiter", 1), labq.devices.lease.Grant)

        def running() -> dict[str, Any] | None:
            doc = status_json(stack)
            tasks = [t for t in doc["tasks"] if t["task_id"] == task_id]
            if not tasks or tasks[0]["state"] != "running":
                return None
            # The worker counts its busy slots at its next heartbeat.
            busy = {w["hostname"]: w["busy"] for w in doc["workers"]}
            return doc if busy.get(tasks[0]["worker"], 0) >= 1 else None

        doc = wait_for(running, f"task {task_id} running in labq status")

        workers = {w["hostname"]: w for w in doc["workers"]}
        assert set(stack.node_names) <= set(workers)
        for name in stack.node_names:
            w = workers[name]
            assert w["concurrency"] == stack.settings.concurrency
            assert 0 <= w["heartbeat_age"] < stack.settings.worker_ttl
            assert stack.settings.default_queue in w["queues"]
        [task] = [t for t in doc["tasks"] if t["task_id"] == task_id]
        assert task["device"] == "hang"
        assert task["run"] == run.id
        assert task["task"] == "tasks.device.execute"
        assert task["worker"] in stack.node_names
        assert task["slot"].startswith(task["worker"] + "/")
        assert task["age"] >= 0
        assert workers[task["worker"]]["busy"] >= 1

        queues = {q["queue"]: q for q in doc["queues"]}
        assert queues[IDLE_QUEUE]["depth"] == 1
        assert queues[IDLE_QUEUE]["consumers"] == []
        for segment in ("lab-a", "lab-b"):
            assert queues[segment]["consumers"] == [
                n for n in stack.node_names if n.startswith(f"{segment}@")]
        assert set(queues[stack.settings.default_queue]["consumers"]) >= set(stack.node_names)

        [lease] = [d for d in doc["leases"] if d["device"] == "hang"]
        assert [(h["holder"], h["worker"]) for h in lease["holders"]] == [
            (task_id, task["worker"])]
        assert [(w["holder"], w["position"]) for w in lease["waiters"]] == [("status-waiter", 1)]

        # The screen has the same facts.
        text = status(stack)
        for fact in (*stack.node_names, IDLE_QUEUE, "hang", "running", task_id[:8],
                     "status-w"):
            assert fact in text, fact
    finally:
        leases.release("hang", "status-waiter")
        run.cancel(grace=2)
        run.close()
    # Once cancelled it is no longer a task taken by a worker.
    wait_for(lambda: all(t["task_id"] != task_id for t in status_json(stack)["tasks"]),
             f"task {task_id} gone from labq status")


def test_unreachable_redis_is_one_error_line_with_the_password_masked() -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "labq", "status", "--broker", url],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("LABQ_")},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("labq: error: Redis at redis://:****@127.0.0.1:")
    assert "hunter2" not in result.stderr + result.stdout


def test_status_as_the_client_acl_user_leaves_out_what_it_may_not_read(
        stack: Stack, client: redis.Redis) -> None:
    """The testscripts' Redis user (config/users.acl) gets a status, with a note
    for any section its ACL forbids instead of an error."""
    # Read-only key patterns (%R~) came with Redis 7; the wheel's server is 6.2.
    major = int(str(client.info("server")["redis_version"]).split(".")[0])
    need(major >= 7, f"config/users.acl needs Redis 7 or later; this one is {major}")
    acl = (ROOT / "config" / "users.acl").read_text().splitlines()
    [rules] = [line.split()[2:] for line in acl if line.startswith("user client ")]
    rules = [">status-pw" if r.startswith(">") else r for r in rules]
    assert stack.redis is not None
    client.execute_command("ACL", "SETUSER", "status-client", *rules)
    try:
        url = f"redis://status-client:status-pw@{stack.redis.host}:{stack.redis.port}/0"
        clean = {k: None for k in os.environ if k.startswith("LABQ_")}
        result = CliRunner().invoke(cli.main, ["status", "--json", "--broker", url],
                                    env=clean, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert set(stack.node_names) <= {w["hostname"] for w in doc["workers"]}
        left_out = {note.split(" not shown")[0] for note in doc["notes"]}
        assert left_out <= {"workers", "queues", "tasks", "device leases"}
        assert "workers" not in left_out
    finally:
        client.execute_command("ACL", "DELUSER", "status-client")
