"""The embedded stack as a user meets it: `labq up`, workers, Redis, limits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from conftest import need
from labq.app import LabqCelery
from labq.embedded.ports import free_ports
from labq.embedded.processes import spawn, stop_tree
from labq.embedded.sim.testbeds import device_entry, write_testbed
from labq.embedded.stack import Stack, child_env, node_name
from labq.errors import StackError
from labq.settings import Settings

LABQ = str(Path(sys.executable).with_name("labq"))


def test_both_workers_answer_ping(app: LabqCelery, stack: Stack) -> None:
    replies = app.control.ping(timeout=2)
    names = {name for reply in replies for name in reply}
    assert set(stack.node_names) <= names


def test_celery_inspect_ping_from_a_shell(stack: Stack) -> None:
    env = {**os.environ, "LABQ_BROKER_URL": stack.settings.broker_url}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in stack.node_names:
        assert f"{name}: OK" in out.stdout


def test_redis_refuses_clients_without_the_password(stack: Stack) -> None:
    assert stack.redis is not None
    anonymous = redis.Redis(host=stack.redis.host, port=stack.redis.port)
    with pytest.raises((redis.AuthenticationError, redis.ResponseError), match=r"(?i)auth"):
        anonymous.ping()
    assert redis.Redis.from_url(stack.settings.broker_url).config_get("appendonly") == {
        "appendonly": "yes"}


@pytest.mark.parametrize("queue", ["lab-a", "lab-b"])
def test_a_queue_is_served_by_its_own_host(app: LabqCelery, queue: str) -> None:
    results = [app.send_task("tasks.diag.echo", kwargs={"value": i}, queue=queue)
               for i in range(6)]
    assert [r.get(timeout=30) for r in results] == list(range(6))
    assert {r.worker.split("@")[0] for r in results} == {queue}


def test_hard_limit_kills_the_task_and_the_worker_keeps_serving(app: LabqCelery) -> None:
    res = app.send_task("tasks.diag.stubborn", kwargs={"seconds": 60}, queue="lab-a",
                        soft_time_limit=0.5, time_limit=1.5)
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=30)
    assert res.state == "FAILURE"
    after = app.send_task("tasks.diag.echo", kwargs={"value": "still here"}, queue="lab-a")
    assert after.get(timeout=30) == "still here"
    assert after.worker.startswith("lab-a@")


def test_soft_limit_interrupts_the_task(app: LabqCelery) -> None:
    res = app.send_task("tasks.diag.sleep", kwargs={"seconds": 30}, queue="lab-b",
                        soft_time_limit=0.5, time_limit=10)
    with pytest.raises(SoftTimeLimitExceeded):
        res.get(timeout=30)


def test_a_failure_carries_the_remote_error(app: LabqCelery) -> None:
    res = app.send_task("tasks.diag.fail", kwargs={"message": "boom-42"})
    res.get(timeout=30, propagate=False)
    assert res.state == "FAILURE" and "boom-42" in str(res.result)
    assert "RuntimeError" in (res.traceback or "")


def _family(pid: int) -> dict[int, tuple[str, str]]:
    """``pid`` and its descendants: pid -> (command line, executable). A
    process that ends between the listing and the read (a busy host's
    short-lived helper) is left out rather than failing the test."""
    found: dict[int, tuple[str, str]] = {}
    top = psutil.Process(pid)
    for p in [top, *top.children(recursive=True)]:
        try:
            found[p.pid] = (" ".join(p.cmdline()), p.exe())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _start_up(tmp_path: Path, path_env: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "LABQ_STATE_DIR": str(tmp_path), "PATH": path_env,
           "LABQ_SHUTDOWN_TIMEOUT": "5"}
    proc = subprocess.Popen([LABQ, "up", "--redis-port", "0", "--flower-port", "0",
                             "--exporter-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "export LABQ_BROKER_URL" in line:
            return proc, "".join(lines)
    proc.kill()
    pytest.fail("labq up did not become ready:\n" + "".join(lines))


@pytest.mark.parametrize("with_system_redis", [True, False], ids=["path-redis", "wheel-redis"])
def test_labq_up_serves_and_ctrl_c_leaves_nothing_behind(
    tmp_path: Path, with_system_redis: bool
) -> None:
    # Without system redis, PATH holds only the venv: the wheel's binary must be used.
    if with_system_redis:
        need(shutil.which("redis-server") is not None, "no redis-server on PATH")
    path_env = os.environ["PATH"] if with_system_redis else str(Path(sys.executable).parent)
    proc, banner = _start_up(tmp_path, path_env)
    try:
        assert "Flower" in banner and "password" in banner
        metrics_url = next(line.split()[1] for line in banner.splitlines()
                           if line.startswith("metrics "))
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            scraped = response.read().decode()
        assert "labq_device_health{" in scraped and "labq_worker_slots{" in scraped
        members = _family(proc.pid)
        family = list(members)
        names = " ".join(cmdline for cmdline, _ in members.values())
        assert "redis-server" in names and names.count("worker") >= 2 and "flower" in names
        redis_exe = next(exe for cmdline, exe in members.values() if "redis-server" in cmdline)
        from_wheel = Path(redis_exe).resolve().is_relative_to(Path(sys.prefix).resolve())
        assert from_wheel is not with_system_redis
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "no process of the stack is left" in out
    left = [p for p in family if psutil.pid_exists(p) and
            psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert left == []


def test_labq_config_masks_secrets_and_names_bad_values() -> None:
    env = {**os.environ, "LABQ_BROKER_URL": "redis://:topsecret@127.0.0.1:1/0",
           "LABQ_FLOWER_PASSWORD": "alsosecret"}
    out = subprocess.run([LABQ, "config"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "topsecret" not in out.stdout and "alsosecret" not in out.stdout
    assert "redis://:****@127.0.0.1:1/0" in out.stdout
    bad = subprocess.run([LABQ, "config"], env={**env, "LABQ_CONCURRENCY": "lots"},
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert "LABQ_CONCURRENCY='lots'" in bad.stderr


def test_labq_worker_serves_one_lab_segment(stack: Stack, app: LabqCelery,
                                            tmp_path: Path) -> None:
    env = {**child_env(stack.settings), "LABQ_SHUTDOWN_TIMEOUT": "5"}
    proc = spawn([LABQ, "worker", "--queues", "seg-z", "--name", "seg-z", "--concurrency", "1"],
                 log_path=tmp_path / "seg-z.log", env=env)
    try:
        node = node_name("seg-z")
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[node], timeout=0.5):
            assert proc.poll() is None, (tmp_path / "seg-z.log").read_text()
            assert time.monotonic() < deadline, "labq worker did not come up"
        queues = app.control.inspect(destination=[node], timeout=2).active_queues()
        assert {q["name"] for q in queues[node]} == {"seg-z", stack.settings.default_queue}
        res = app.send_task("tasks.diag.echo", kwargs={"value": "z"}, queue="seg-z")
        assert res.get(timeout=30) == "z" and res.worker == node
    finally:
        stop_tree(proc, timeout=15)
    assert proc.returncode is not None


def test_celery_worker_with_a_threads_pool_is_refused(stack: Stack) -> None:
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "worker",
                          "--pool", "threads", "-c", "1"],
                         env=child_env(stack.settings), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "threads" in out.stderr and "prefork" in out.stderr


def test_a_second_stack_names_the_ports_another_one_holds(tmp_path: Path) -> None:
    # As labq demo while labq up runs: the sim's device ports are taken.
    taken, free = free_ports(2)
    testbed = write_testbed(tmp_path / "testbed.yaml", {
        "r1": device_entry("127.0.0.1", taken), "r2": device_entry("127.0.0.1", free)})
    settings = Settings.load(env={}, config_file=os.devnull, state_dir=tmp_path,
                             testbed=testbed, flower_port=0)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        with pytest.raises(StackError) as info:
            Stack(settings, redis_port=0).start()
    assert str(info.value).startswith(f"ports {taken} (device r1) are in use, most likely by "
                                      "another labq up or labq demo: stop it")
    assert str(free) not in str(info.value)
    assert "--redis-port 0 --flower-port 0" in str(info.value)
