"""Device tasks over real SSH to the simulated lab: routing, leases, faults, secrets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

import labq
from conftest import FREE_DEVICES, LAB_PASSWORD, LEASE_DEVICES, SEGMENT_DEVICES, TRICKLE, need
from labq.app import LabqCelery
from labq.embedded.sim.ios_shows import inventory
from labq.embedded.stack import Stack
from labq.keys import lease_keys
from tasks import device

#: ``show clock`` as the sim prints it, whole.
CLOCK = re.compile(r"\*?\d\d:\d\d:\d\d\.\d{3} UTC \w{3} \w{3} \d\d \d{4}")


def run(app: LabqCelery, name: str = "dev") -> labq.Run:
    return labq.Run(name, app=app, progress=False)


def test_execute_returns_the_device_output(app: LabqCelery) -> None:
    out = labq.pcall(device.execute, device=["a1", "b1"], ckwargs={"command": "show version"},
                     run=run(app))
    assert "Cisco IOS" in out[0] and "a1 uptime" in out[0]
    assert "b1 uptime" in out[1]


def test_execute_many_commands_returns_a_dict(app: LabqCelery) -> None:
    (out,) = labq.pcall(device.execute, device=["a2"],
                        ckwargs={"commands": ["show version", "show ip interface brief"]},
                        run=run(app))
    assert set(out) == {"show version", "show ip interface brief"}
    assert "Interface" in out["show ip interface brief"]


def test_tasks_run_only_on_the_host_of_the_device_segment(app: LabqCelery) -> None:
    devices = SEGMENT_DEVICES["lab-a"] + SEGMENT_DEVICES["lab-b"]
    with run(app, "routing") as r:
        for name in devices:
            r.submit(device.execute, device=name, command="show version")
    for o in r.outcomes:
        assert o.status is labq.Status.SUCCEEDED, o.error
        segment = "lab-a" if o.device in SEGMENT_DEVICES["lab-a"] else "lab-b"
        assert o.worker and o.worker.startswith(f"{segment}@")


def test_unknown_device_is_refused_at_submit_with_close_matches(app: LabqCelery,
                                                                stack: Stack) -> None:
    client = redis.Redis.from_url(stack.settings.broker_url)
    before = {q: client.llen(q) for q in ("labq", "lab-a", "lab-b")}
    with run(app, "unknown") as r:
        with pytest.raises(labq.UnknownDevice, match=r"'a01'.*'a1'") as info:
            r.submit(device.execute, device="a01", command="show version")
        assert r.outcomes == []
    assert "a1" in info.value.close_matches
    assert {q: client.llen(q) for q in before} == before


def test_configure_applies_and_verifies_lines(app: LabqCelery) -> None:
    lines = ["interface Loopback7", "description set-by-labq"]
    (result,) = labq.pcall(device.configure, device=["a3"], ckwargs={"lines": lines},
                           run=run(app))
    assert result["applied"] == lines
    (running,) = labq.pcall(device.execute, device=["a3"],
                            ckwargs={"command": "show running-config"}, run=run(app))
    assert "description set-by-labq" in running


def test_reachable_answers_from_the_devices_host(app: LabqCelery) -> None:
    up, down = labq.pcall(device.reachable, device=["b2", "unreach"], run=run(app))
    assert up["reachable"] is True
    assert down["reachable"] is False and down["device"] == "unreach"


def test_faulty_devices_end_in_the_right_status(app: LabqCelery, stack: Stack) -> None:
    with run(app, "faults") as r:
        hang = r.submit(device.execute, device="hang",
                        commands=["show ip interface brief", "show version"],
                        soft_time_limit=2, time_limit=10)
        auth = r.submit(device.execute, device="authfail", command="show version")
        unreach = r.submit(device.execute, device="unreach", command="show version")
    by_id = {o.task_id: o for o in r.outcomes}
    assert by_id[hang].status is labq.Status.SOFT_TIMEOUT, by_id[hang].error
    # The output gathered before the interrupt is kept; the hung command is named.
    assert list(by_id[hang].value) == ["show ip interface brief", "show version"]
    assert "Interface" in by_id[hang].value["show ip interface brief"]
    assert by_id[hang].value["show version"] == ""
    assert by_id[hang].error is not None and by_id[hang].error.message == (
        "soft time limit reached on 'hang' during 'show version' "
        "(0 chars of its output had arrived)")
    assert by_id[auth].status is labq.Status.FAILED
    assert by_id[auth].error and by_id[auth].error.type == "AuthenticationFailed"
    assert "authfail" in by_id[auth].error.message
    assert by_id[unreach].status is labq.Status.FAILED
    assert by_id[unreach].error and by_id[unreach].error.type == "DeviceUnreachable"
    assert "127.0.0.1:" in by_id[unreach].error.message
    _no_session_left(stack, "hang")


def test_a_slow_device_returns_its_whole_output_at_any_speed(app: LabqCelery) -> None:
    # A prompt read half way ("trickle3", "30ms#") must not end the command early.
    names = list(TRICKLE)
    with run(app, "trickle") as r:
        for name in names:
            r.submit(device.execute, device=name, commands=["show inventory", "show clock"])
    outcomes = r.outcomes
    assert [o.status for o in outcomes] == [labq.Status.SUCCEEDED] * 3, [
        o.error for o in outcomes]
    for name, outcome in zip(names, outcomes, strict=True):
        assert outcome.value["show inventory"] == inventory(name), (name, TRICKLE[name])
        assert CLOCK.fullmatch(outcome.value["show clock"]), (name, outcome.value)


def test_a_device_too_slow_for_the_soft_limit_ends_soft_timeout_with_what_arrived(
        app: LabqCelery, stack: Stack) -> None:
    with run(app, "crawl") as r:
        r.submit(device.execute, device="crawl", commands=["show clock", "show version"],
                 soft_time_limit=7, time_limit=20)
    [outcome] = r.outcomes
    assert outcome.status is labq.Status.SOFT_TIMEOUT, outcome.error
    done, cut = outcome.value["show clock"], outcome.value["show version"]
    assert CLOCK.fullmatch(done), done
    # What arrived of the command that was cut short is kept, and said to be partial.
    assert cut and "Cisco IOS XE Software, Version 17.9.4a".startswith(cut[:38])
    assert len(cut) < 300
    assert outcome.error is not None
    assert f"during 'show version' ({len(cut)} chars of its output had arrived)" in (
        outcome.error.message)
    _no_session_left(stack, "crawl")


def test_a_dropped_connection_fails_at_once_naming_device_command_and_time(
        app: LabqCelery, stack: Stack) -> None:
    with run(app, "drops") as r:
        r.submit(device.execute, device="drops", commands=["show clock", "show version"],
                 soft_time_limit=30, time_limit=40)
    [outcome] = r.outcomes
    assert outcome.status is labq.Status.FAILED
    assert outcome.error is not None and outcome.error.type == "DeviceDisconnected"
    assert re.fullmatch(r"device 'drops' at 127\.0\.0\.1:\d+ closed the connection during "
                        r"'show version' after \d+\.\d s \(0 chars of output had arrived\)",
                        outcome.error.message), outcome.error.message
    assert outcome.duration is not None and outcome.duration < 5  # not the 60 s read timeout
    _no_session_left(stack, "drops")
    lease = lease_keys("drops")[0]
    assert redis.Redis.from_url(stack.settings.broker_url).zrange(lease, 0, -1) == []


def _no_session_left(stack: Stack, name: str) -> None:
    assert stack.sim is not None
    deadline = time.monotonic() + 5
    while stack.sim.state(name)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.sim.state(name)["sessions"] == 0


def test_leases_hold_under_200_tasks_on_5_devices(app: LabqCelery, stack: Stack) -> None:
    assert stack.sim is not None
    stack.sim.reset()
    with run(app, "leases") as r:
        for i in range(200):
            r.submit(device.execute, device=LEASE_DEVICES[i % 5], command="show version")
    assert [o.status for o in r.outcomes] == [labq.Status.SUCCEEDED] * 200
    state = stack.sim.state(events=False)
    for name in LEASE_DEVICES:
        assert state[name]["peak"] == 1, (name, state[name])
        assert state[name]["sessions"] == 0
    assert {o.worker.split("@")[0] for o in r.outcomes if o.worker} == {"lab-a", "lab-b"}


def test_free_devices_are_not_starved_by_a_busy_one(app: LabqCelery) -> None:
    with run(app, "starve") as r:
        busy = [r.submit(device.execute, device="l1", command="show version")
                for _ in range(40)]
        free = [r.submit(device.execute, device=name, command="show version")
                for name in FREE_DEVICES]
    by_id = {o.task_id: o for o in r.outcomes}
    assert all(o.ok for o in r.outcomes), [o.error for o in r.outcomes if not o.ok][:3]
    last_free = max(by_id[t].finished_at for t in free if by_id[t].finished_at)
    last_busy = max(by_id[t].finished_at for t in busy if by_id[t].finished_at)
    first = min(o.queued_at for o in r.outcomes if o.queued_at)
    # The 40 free devices finish in well under half the time the busy one needs.
    assert (last_free - first) < 0.5 * (last_busy - first)


def test_unicon_driver_runs_execute_on_a_mock_device(app: LabqCelery) -> None:
    need(Path(sys.executable).with_name("mock_device_cli").exists(),
         "the pyats extra is not installed (pip install -e '.[pyats]')")
    (out,) = labq.pcall(device.execute, device=["u1"], ckwargs={"command": "show version"},
                        run=run(app))
    assert "Cisco IOS" in out


def test_labq_devices_lists_holders_and_waiters(stack: Stack) -> None:
    env = {**__import__("os").environ, **stack.settings.to_env()}
    out = subprocess.run([str(Path(sys.executable).with_name("labq")), "devices", "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {row["device"]: row for row in json.loads(out.stdout)}
    assert rows["a1"]["queue"] == "lab-a" and rows["l1"]["queue"] == "labq"
    assert rows["a1"]["max_sessions"] == 1 and rows["a1"]["holders"] == []


def test_no_secret_reaches_redis_flower_or_logs(app: LabqCelery, stack: Stack) -> None:
    with run(app, "secrets") as r:
        r.submit(device.execute, device="a4", command="show running-config")
        r.submit(device.execute, device="authfail", command="show version")
    client = redis.Redis.from_url(stack.settings.broker_url)
    needle = LAB_PASSWORD.encode()
    leaks = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [k + b"=" + v for k, v in client.hgetall(key).items()]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [json.dumps({k.decode(): v.decode() for k, v in f.items()}).encode()
                      for _, f in client.xrange(key)]
        else:
            values = []
        if needle in key or any(needle in v for v in values):
            leaks.append(key)
    assert leaks == []
    assert LAB_PASSWORD not in stack.flower_get("/api/tasks")
    for log in stack.log_dir.glob("*.log"):
        assert LAB_PASSWORD not in log.read_text(errors="replace"), log


def test_a_hard_kill_frees_the_lease_and_the_session_at_once(app: LabqCelery,
                                                             stack: Stack) -> None:
    from labq.devices.lease import Leases
    from tasks import diag

    assert stack.sim is not None
    leases = Leases(redis.Redis.from_url(stack.settings.broker_url))
    with run(app, "kill") as r:
        task_id = r.submit(diag.hold_device, device="l5", soft_time_limit=1, time_limit=2.5)
        deadline = time.monotonic() + 20
        while not leases.holders("l5") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [h.holder for h in leases.holders("l5")] == [task_id]
    (outcome,) = r.outcomes
    assert outcome.status is labq.Status.HARD_TIMEOUT
    deadline = time.monotonic() + 1.0
    while (leases.holders("l5") or stack.sim.state("l5")["sessions"]) and (
            time.monotonic() < deadline):
        time.sleep(0.05)
    assert leases.holders("l5") == []  # released by the worker's main process, not the TTL
    assert stack.sim.state("l5")["sessions"] == 0


def test_a_unicon_session_stuck_in_a_long_command_is_destroyed(app: LabqCelery,
                                                               stack: Stack) -> None:
    need(Path(sys.executable).with_name("mock_device_cli").exists(),
         "the pyats extra is not installed (pip install -e '.[pyats]')")
    need(shutil.which("ssh") is not None, "no ssh client (apt-get install openssh-client)")
    assert stack.sim is not None
    port = stack.sim.ports["uhang"]
    with run(app, "unicon-stuck") as r:
        r.submit(device.execute, device="uhang", commands=["show version", "show clock"],
                 timeout=600, soft_time_limit=3, time_limit=10)
    (outcome,) = r.outcomes
    assert outcome.status is labq.Status.SOFT_TIMEOUT, outcome.error
    assert list(outcome.value) == ["show version"]
    deadline = time.monotonic() + 2
    while stack.sim.state("uhang", events=False)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.sim.state("uhang", events=False)["sessions"] == 0
    # unicon's ssh child is gone too.
    ssh = [p for p in psutil.process_iter(["name", "cmdline"])
           if p.info["name"] == "ssh" and str(port) in " ".join(p.info["cmdline"] or [])]
    assert ssh == []


def test_a_device_task_called_directly_releases_its_lease_at_once(app: LabqCelery,
                                                                   stack: Stack) -> None:
    # Called as a plain function (no worker, no stored result), the task
    # runs here and must give its lease back itself: nothing else would
    # before the TTL. labq sets no app as current; the caller does.
    from celery import _state

    from labq.devices.lease import Leases
    from labq.errors import ConfigError

    with pytest.raises(ConfigError, match=r"app\.set_current\(\)"):
        device.execute(device="f40", command="show version")  # Celery's default app
    previous = _state.get_current_app()
    app.set_current()
    try:
        out = device.execute(device="f40", command="show version")
    finally:
        previous.set_current()
    assert "f40 uptime" in out
    leases = Leases(redis.Redis.from_url(stack.settings.broker_url))
    assert leases.holders("f40") == []


def test_a_device_passed_positionally_is_routed_like_device_equals(app: LabqCelery) -> None:
    with run(app, "positional") as r:
        r.submit(device.execute, "b3", command="show version")
    [outcome] = r.outcomes
    assert outcome.status is labq.Status.SUCCEEDED, outcome.error
    assert outcome.device == "b3" and outcome.worker is not None and "lab-b" in outcome.worker
    assert "b3 uptime" in outcome.value


@pytest.mark.parametrize(("state", "password", "enable", "refused"), [
    ("general_login", "cisco", None, False),
    ("general_login", "not-cisco", None, True),
    ("general_exec", "cisco", "cisco", False),
    # unicon tries the default password after the enable one: both wrong here.
    ("general_exec", "not-cisco", "not-cisco-either", True),
], ids=["login", "refused-login", "enable", "refused-enable"])
def test_unicon_maps_a_refused_login_or_enable_password_by_its_type(
        tmp_path: Path, state: str, password: str, enable: str | None, refused: bool) -> None:
    mock = Path(sys.executable).with_name("mock_device_cli")
    need(mock.exists(), "the pyats extra is not installed (pip install -e '.[pyats]')")
    from labq.devices.drivers import open_session
    from labq.devices.testbed_yaml import load_testbed
    from labq.embedded.sim.testbeds import write_testbed

    path = write_testbed(tmp_path / "unicon.yaml", {"u9": {
        "os": "iosxe", "type": "router",
        "connections": {"defaults": {"class": "unicon.Unicon"},
                        "cli": {"command": f"{mock} --os iosxe --state {state} "
                                           "--hostname u9"}}}},
        username="cisco", password=password, enable_password=enable)
    dev = load_testbed(path).device("u9")
    if not refused:
        session = open_session(dev, 20)
        assert session.execute("show version").startswith("Cisco IOS Software")
        session.close()
        return
    # unicon says CredentialsExhaustedError, with no "auth" in its words.
    with pytest.raises(labq.AuthenticationFailed, match=r"'u9' .* refused the login") as info:
        open_session(dev, 20)
    assert type(info.value.__cause__).__name__ == "CredentialsExhaustedError"
