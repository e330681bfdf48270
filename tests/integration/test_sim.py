"""The simulated lab over real SSH: netmiko's cisco_ios driver, faults, accounting, scale."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest
from click.testing import CliRunner
from netmiko import ConnectHandler
from netmiko.exceptions import (
    NetmikoAuthenticationException,
    NetmikoTimeoutException,
    ReadTimeout,
)

from labq.embedded.ports import free_ports
from labq.embedded.sim import SimProcess, make_testbed, sim_reset, sim_state, write_testbed
from labq.embedded.sim.command import sim as sim_command
from labq.embedded.sim.testbeds import DEMO_PASSWORD, DEMO_USER, device_entry
from labq.errors import SimLabError

LATENCY = 0.3
SLOW = 0.001
ENABLE = "en-Secret-1"


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    tmp = tmp_path_factory.mktemp("sim")
    p = free_ports(9)
    knobs: dict[str, dict[str, Any]] = {
        "plain": {}, "slow": {"latency": LATENCY}, "hangs": {"hang": "^show version"},
        "trickle": {"slow_chars": SLOW}, "drops": {"disconnect_on": "^reload"},
        "locked": {"auth_fail": True}, "gone": {"unreachable": True},
        "shifty": {"latency": 0.01},
    }
    devices = {name: device_entry("127.0.0.1", port, sim=sim)
               for (name, sim), port in zip(knobs.items(), p[:8], strict=True)}
    devices["guarded"] = device_entry("127.0.0.1", p[8], credentials={
        "enable": {"password": ENABLE}})
    path = write_testbed(tmp / "testbed.yaml", devices, name="sim-test")
    with SimProcess(path, state_dir=tmp / "state") as process:
        yield process


@pytest.fixture()
def state(lab: SimProcess) -> Callable[[str], dict[str, Any]]:
    sim_reset(lab.control_url)
    return lambda name: sim_state(lab.control_url, name)


def connect(lab: SimProcess, name: str, **kw: Any) -> Any:
    params = {"device_type": "cisco_ios", "host": "127.0.0.1", "port": lab.ports[name],
              "username": DEMO_USER, "password": DEMO_PASSWORD, "conn_timeout": 5}
    params.update(kw)
    return ConnectHandler(**params)


def events(st: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in st["events"] if e["event"] == kind]


def test_netmiko_show_and_configure(lab: SimProcess, state: Callable[[str], Any]) -> None:
    conn = connect(lab, "plain")
    try:
        assert conn.find_prompt() == "plain#"
        version = conn.send_command("show version")
        assert "Cisco IOS XE Software" in version and "plain uptime is" in version
        brief = conn.send_command("show ip interface brief")
        assert brief.splitlines()[1].startswith("GigabitEthernet1")
        lines = ["interface GigabitEthernet2", "description labq-test", "no shutdown", "exit",
                 "logging host 192.0.2.10"]
        out = conn.send_config_set(lines)
        assert "plain(config-if)#" in out
        config = conn.send_command("show running-config")
        assert " description labq-test" in config
        assert "\nlogging host 192.0.2.10\n" in config
        assert "hostname plain" in config
        assert "% Invalid input detected at '^' marker." in conn.send_command("show bogus")
        assert "[OK]" in conn.save_config()
    finally:
        conn.disconnect()
    wait_for(lambda: state("plain")["sessions"] == 0)
    commands = [e["command"] for e in events(state("plain"), "command")]
    assert commands[:2] == ["terminal width 511", "terminal length 0"]
    assert "show version" in commands and "configure terminal" in commands


def test_sessions_are_counted_and_closed(lab: SimProcess, state: Callable[[str], Any]) -> None:
    # The previous test's disconnect may still be closing on the server side.
    wait_for(lambda: state("plain")["sessions"] == 0)
    first = connect(lab, "plain")
    assert state("plain")["sessions"] == 1
    second = connect(lab, "plain")
    assert state("plain")["sessions"] == 2
    first.disconnect()
    second.disconnect()
    wait_for(lambda: state("plain")["sessions"] == 0)
    st = state("plain")
    assert (st["peak"], st["opened"]) == (2, 2)
    opened = [e["session"] for e in events(st, "open")]
    closed = [e["session"] for e in events(st, "close")]
    assert sorted(opened) == sorted(closed) and len(set(opened)) == 2
    assert all(e["user"] == DEMO_USER for e in events(st, "open"))


def test_a_closed_session_is_gone_on_the_device_when_close_returns(
        lab: SimProcess, state: Callable[[str], Any]) -> None:
    # The lease passes on as soon as close() returns: by then the device must
    # have let the session go, or the next holder would find it still there.
    from labq.devices.drivers import open_session
    from labq.devices.testbed_yaml import load_testbed

    wait_for(lambda: state("plain")["sessions"] == 0)
    device = load_testbed(lab.testbed).device("plain")
    for _ in range(10):
        session = open_session(device)
        assert "plain uptime is" in session.execute("show version")
        session.close()
        assert state("plain")["sessions"] == 0
    assert state("plain")["peak"] == 1


def shell(lab: SimProcess, name: str, typed: str) -> str:
    """Everything a raw vt100 shell shows for ``typed`` (which should end in exit)."""

    async def run() -> str:
        async with asyncssh.connect("127.0.0.1", lab.ports[name], username=DEMO_USER,
                                    password=DEMO_PASSWORD, known_hosts=None) as conn:
            proc = await conn.create_process(term_type="vt100")
            proc.stdin.write(typed)
            return str(await asyncio.wait_for(proc.stdout.read(), 10))

    return asyncio.run(run())


def test_enable_password(lab: SimProcess, state: Callable[[str], Any]) -> None:
    conn = connect(lab, "guarded", secret=ENABLE)
    try:
        assert conn.find_prompt() == "guarded>"
        conn.enable()
        assert conn.find_prompt() == "guarded#"
        assert "hostname guarded" in conn.send_command("show running-config")
    finally:
        conn.disconnect()
    # Three wrong secrets, typed blind: no echo, then "% Bad secrets" as on IOS.
    screen = shell(lab, "guarded", "enable\nnope-1\nnope-2\nnope-3\nexit\n")
    assert "guarded>enable\r\nPassword: \r\nPassword: \r\nPassword: \r\n% Bad secrets" in screen
    assert "nope" not in screen
    wait_for(lambda: state("guarded")["sessions"] == 0)
    st = state("guarded")
    assert ENABLE not in str(st) and "nope" not in str(st)
    assert "enable" in [e["command"] for e in events(st, "command")]


def test_raw_shell_echo_and_line_editing(lab: SimProcess) -> None:
    screen = shell(lab, "plain", "show clockx\x7f\r\nconf t\rint gi3\r\x1aexit\r")
    assert "plain#show clockx\b \b\r\n*" in screen and " UTC " in screen
    assert "plain(config-if)#^Z\r\nplain#exit" in screen


def test_latency_delays_every_command(lab: SimProcess, state: Callable[[str], Any]) -> None:
    conn = connect(lab, "slow")
    try:
        start = time.monotonic()
        assert "UTC" in conn.send_command("show clock")
        assert time.monotonic() - start >= LATENCY
    finally:
        conn.disconnect()


def test_slow_chars_trickle_the_output(lab: SimProcess, state: Callable[[str], Any]) -> None:
    conn = connect(lab, "trickle")
    try:
        start = time.monotonic()
        version = conn.send_command("show version", read_timeout=30)
        elapsed = time.monotonic() - start
    finally:
        conn.disconnect()
    assert "Configuration register is 0x2102" in version  # intact, char by char
    assert elapsed >= len(version) * SLOW


def test_hang_never_answers_until_the_client_leaves(lab: SimProcess,
                                                    state: Callable[[str], Any]) -> None:
    conn = connect(lab, "hangs")
    assert "UTC" in conn.send_command("show clock")
    with pytest.raises(ReadTimeout):
        conn.send_command("show version", read_timeout=1)
    st = state("hangs")
    assert st["sessions"] == 1 and events(st, "hang")[0]["command"] == "show version"
    conn.paramiko_cleanup()  # what a soft timeout's cleanup does: drop the transport
    wait_for(lambda: state("hangs")["sessions"] == 0)
    assert events(state("hangs"), "close")


def test_disconnect_on_drops_the_connection(lab: SimProcess,
                                           state: Callable[[str], Any]) -> None:
    conn = connect(lab, "drops")
    try:
        with pytest.raises((OSError, EOFError, ReadTimeout)):
            conn.send_command("reload", read_timeout=2)
        assert not conn.is_alive()
    finally:
        conn.paramiko_cleanup()
    wait_for(lambda: state("drops")["sessions"] == 0)
    assert events(state("drops"), "disconnect")[0]["command"] == "reload"


def test_auth_fail_refuses_every_login(lab: SimProcess, state: Callable[[str], Any]) -> None:
    with pytest.raises(NetmikoAuthenticationException):
        connect(lab, "locked")
    st = state("locked")
    assert st["opened"] == 0 and events(st, "auth_fail")[0]["user"] == DEMO_USER
    with pytest.raises(NetmikoAuthenticationException):
        connect(lab, "plain", password="wrong-password")


def test_unreachable_port_is_closed(lab: SimProcess) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", lab.ports["gone"]), timeout=2).close()
    with pytest.raises(NetmikoTimeoutException, match="TCP connection to device failed"):
        connect(lab, "gone")
    assert sim_state(lab.control_url, "gone")["listening"] is False


def test_exec_request_runs_one_command(lab: SimProcess) -> None:
    async def run() -> str:
        async with asyncssh.connect("127.0.0.1", lab.ports["plain"], username=DEMO_USER,
                                    password=DEMO_PASSWORD, known_hosts=None) as conn:
            result = await conn.run("show version", check=True, timeout=10)
            return str(result.stdout)

    assert "plain uptime is" in asyncio.run(run())


def test_control_endpoint(lab: SimProcess) -> None:
    everything = sim_state(lab.control_url, events=False)
    assert set(everything) == {"plain", "slow", "hangs", "trickle", "drops", "locked", "gone",
                               "guarded", "shifty"}
    assert "events" not in everything["plain"]
    assert everything["plain"]["port"] == lab.ports["plain"]
    with pytest.raises(SimLabError, match="HTTP 404"):
        sim_state(lab.control_url, "r99")


def test_bad_testbed_and_busy_port_fail_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: {r1: {os: iosxe, type: router}}\n")
    with pytest.raises(SimLabError, match="device 'r1': connections: missing"):
        SimProcess(bad, state_dir=tmp_path / "a", ready_timeout=20).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = write_testbed(tmp_path / "busy.yaml", {
            "r1": device_entry("127.0.0.1", taken.getsockname()[1])})
        with pytest.raises(SimLabError, match="simulated device 'r1': cannot listen"):
            SimProcess(busy, state_dir=tmp_path / "b", ready_timeout=20).start()


def test_sim_command_help_shows_envvars() -> None:
    result = CliRunner().invoke(sim_command, ["--help"])
    assert result.exit_code == 0
    assert "LABQ_TESTBED" in result.output and "LABQ_SIM_CONTROL_PORT" in result.output


def test_a_thousand_devices_in_one_process(tmp_path: Path) -> None:
    path = make_testbed(tmp_path, 1000, fixed_ports=False, name="big")
    with SimProcess(path, state_dir=tmp_path / "state", ready_timeout=60) as big:
        ports = big.ports
        assert len(set(ports.values())) == 1000 and 0 not in ports.values()
        for name in ("r1", "r500", "r1000"):
            conn = connect(big, name)
            try:
                assert f"{name} uptime is" in conn.send_command("show version")
            finally:
                conn.disconnect()
        everything = big.state(events=False)
        assert len(everything) == 1000
        wait_for(lambda: big.state("r500")["sessions"] == 0)
        assert big.state("r500")["opened"] == 1
        assert big.pid is not None
        proc = psutil.Process(big.pid)
        assert proc.num_fds() >= 1000  # one listener each
        assert proc.memory_info().rss < 400 * 2**20
        pid = big.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_fault_knobs_change_at_run_time_and_come_back(lab: SimProcess) -> None:
    port = lab.ports["shifty"]
    try:
        session = connect(lab, "shifty")
        # Unreachable: the port closes and the open session is dropped.
        assert lab.set_faults("shifty", unreachable=True) == {"latency": 0.01,
                                                               "unreachable": True}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises((OSError, EOFError, ValueError, NetmikoTimeoutException)):
            session.send_command("show version", read_timeout=3)
        assert sim_state(lab.control_url, "shifty")["listening"] is False
        # Reachable again, on the same port; then refusing logins.
        lab.set_faults("shifty", unreachable=False)
        with connect(lab, "shifty") as again:
            assert "shifty uptime is" in again.send_command("show version")
        lab.set_faults("shifty", auth_fail=True)
        with pytest.raises(NetmikoAuthenticationException):
            connect(lab, "shifty")
        # Back to the testbed's knobs.
        assert lab.clear_faults("shifty") == {"latency": 0.01}
        with connect(lab, "shifty") as back:
            assert "shifty uptime is" in back.send_command("show version")
    finally:
        lab.clear_faults("shifty")
    events_seen = [e["event"] for e in sim_state(lab.control_url, "shifty")["events"]]
    assert "unreachable" in events_seen and "reachable" in events_seen


def test_a_bad_fault_knob_is_refused_by_name(lab: SimProcess) -> None:
    with pytest.raises(SimLabError, match=r"HTTP 400.*sideways.*unknown sim knob"):
        lab.set_faults("shifty", sideways=True)
    with pytest.raises(SimLabError, match=r"HTTP 400.*latency=-1.*0 or more"):
        lab.set_faults("shifty", latency=-1)
    with pytest.raises(SimLabError, match=r"HTTP 404.*'r99'"):
        lab.set_faults("r99", hang="x")
    assert sim_state(lab.control_url, "shifty")["faults"] == {"latency": 0.01}
