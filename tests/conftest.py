"""Fixtures that start real services and clean them up.

Redis comes from the same launcher as ``labq up``; workers are real prefork
workers started as ``celery -A tasks worker`` processes by :class:`Stack`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from labq.app import LabqCelery, create_app
from labq.embedded.ports import free_ports
from labq.embedded.processes import spawn, stop_trees
from labq.embedded.redis_server import RedisServer
from labq.embedded.sim.testbeds import device_entry, write_testbed
from labq.embedded.stack import PROJECT_ROOT, Stack, WorkerSpec, child_env, node_name, worker_argv
from labq.keys import worker_key
from labq.settings import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip with ``reason`` when ``condition`` is false; in CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test is in exactly one tier, by the folder it lives in.
    for item in items:
        for tier in ("unit", "integration", "browser", "multihost"):
            if f"{os.sep}{tier}{os.sep}" in str(item.path):
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real, password-protected Redis on loopback for the whole session."""
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture()
def lone_app(redis_server: RedisServer, tmp_path: Path) -> Iterator[LabqCelery]:
    """An app on the session Redis, which no worker consumes: queued messages stay put."""
    settings = Settings.load(env={}, config_file=os.devnull, state_dir=tmp_path,
                             broker_url=redis_server.url)
    a = create_app(settings)
    yield a
    a.close()


def stack_settings(tmp: Path, **changes: object) -> Settings:
    base = {"state_dir": tmp, "flower_port": 0, "concurrency": 2,
            "soft_time_limit": 20.0, "time_limit": 30.0, "shutdown_timeout": 5.0}
    base.update(changes)
    return Settings.load(env={}, config_file=os.devnull, **base)


#: The session lab's password: unique, so a scan for it finds only leaks.
LAB_PASSWORD = f"sim-{secrets.token_hex(8)}"
SEGMENT_DEVICES = {"lab-a": [f"a{i}" for i in range(1, 11)],
                   "lab-b": [f"b{i}" for i in range(1, 11)]}
LEASE_DEVICES = [f"l{i}" for i in range(1, 6)]
FREE_DEVICES = [f"f{i}" for i in range(1, 41)]
#: Devices whose output trickles, by seconds per character.
TRICKLE = {"trickle2ms": 0.002, "trickle10ms": 0.01, "trickle30ms": 0.03}
#: Pools, by (queue, role): devices that Picks and topologies choose from.
POOLS = {("lab-a", "spine"): ["sp-a1", "sp-a2"], ("lab-b", "spine"): ["sp-b1"],
         ("lab-a", "leaf"): ["lf-a1", "lf-a2", "lf-a3"]}
#: The property test's own lab: 10 devices on two segments, leaves and spines.
PROP_DEVICES = {f"p{i}": ("lab-a" if i < 5 else "lab-b", "p-spine" if i % 5 >= 3 else "p-leaf")
                for i in range(10)}
FAULTY = {"hang": {"hang": "show version"}, "authfail": {"auth_fail": True},
          "unreach": {"unreachable": True}, "slowpoke": {"latency": 0.3},
          "drops": {"disconnect_on": "^show version"}, "crawl": {"slow_chars": 0.06},
          **{name: {"slow_chars": delay} for name, delay in TRICKLE.items()}}


def lab_testbed(path: Path) -> Path:
    """The session's simulated lab: two segments, lease and free devices, faulty ones,
    and a unicon mock device when pyATS is installed."""
    labelled = [*((n, q, r) for (q, r), members in POOLS.items() for n in members),
                *((n, q, r) for n, (q, r) in PROP_DEVICES.items())]
    names = [*SEGMENT_DEVICES["lab-a"], *SEGMENT_DEVICES["lab-b"], *LEASE_DEVICES,
             *FREE_DEVICES, *FAULTY, *(n for n, _, _ in labelled), "uhang"]
    # One batch: ports drawn in two calls may repeat, as none is bound until the sim starts.
    ports = iter(free_ports(len(names)))
    devices: dict[str, dict[str, object]] = {}
    for queue, members in SEGMENT_DEVICES.items():
        for name in members:
            devices[name] = device_entry("127.0.0.1", next(ports), queue=queue)
    for name in [*LEASE_DEVICES, *FREE_DEVICES]:
        devices[name] = device_entry("127.0.0.1", next(ports))
    for name, knobs in FAULTY.items():
        devices[name] = device_entry("127.0.0.1", next(ports), sim=knobs)
    for name, queue, role in labelled:
        devices[name] = device_entry("127.0.0.1", next(ports), queue=queue)
        devices[name]["custom"]["labq"]["labels"] = {"role": role}  # type: ignore[index]
    mock = Path(sys.executable).with_name("mock_device_cli")
    if mock.exists():
        # unicon over real ssh to a simulated device whose `show clock` hangs.
        devices["uhang"] = device_entry("127.0.0.1", next(ports), sim={"hang": "^show clock"})
        devices["uhang"]["custom"]["labq"]["driver"] = "unicon"  # type: ignore[index]
        devices["u1"] = {
            "os": "iosxe", "type": "router",
            "connections": {"defaults": {"class": "unicon.Unicon"},
                            "cli": {"command": f"{mock} --os iosxe --state general_enable "
                                               "--hostname u1"}},
            "custom": {"labq": {"queue": "lab-a"}},
        }
    return write_testbed(path, devices, name="session-lab", password=LAB_PASSWORD)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded stack: the simulated lab, Redis, workers lab-a and lab-b
    (8 prefork children each), and Flower."""
    tmp = tmp_path_factory.mktemp("stack")
    settings = stack_settings(tmp, testbed=lab_testbed(tmp / "testbed.yaml"), concurrency=8)
    s = Stack(settings,
              workers=(WorkerSpec("lab-a", ("lab-a",)), WorkerSpec("lab-b", ("lab-b",))))
    s.start()
    yield s
    s.stop()


@pytest.fixture()
def app(stack: Stack) -> Iterator[LabqCelery]:
    """A client app pointed at the session stack."""
    a = create_app(stack.settings)
    yield a
    a.close()


ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    need(path is not None, "chromium is not installed (apt-get install chromium chromium-driver)")
    assert path
    return path


@pytest.fixture(scope="session")
def chromedriver() -> str:
    path = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None)
    need(path is not None, "chromedriver is not installed (apt-get install chromium-driver)")
    assert path
    return path


@pytest.fixture()
def browser(chromium: str, chromedriver: str, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile and no credentials yet."""
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# Process-table helpers for the kill and shutdown tests: diag tasks record
# their pids in a pidfile as `task <pid>` and `child <pid>` lines.

def recorded(pidfile: Path) -> dict[str, list[int]]:
    """``{"task": [pid], "child": [pid, ...]}`` from a diag task's pidfile."""
    roles: dict[str, list[int]] = {}
    if pidfile.exists():
        for line in pidfile.read_text().splitlines():
            role, pid = line.split()
            roles.setdefault(role, []).append(int(pid))
    return roles


def wait_recorded(pidfile: Path, children: int, timeout: float = 30.0) -> dict[str, list[int]]:
    deadline = time.monotonic() + timeout
    while True:
        roles = recorded(pidfile)
        if len(roles.get("child", [])) >= children and roles.get("task"):
            return roles
        if time.monotonic() > deadline:
            pytest.fail(f"the task recorded only {roles} in {timeout} s")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_alive(pids: list[int], timeout: float = 1.0) -> list[int]:
    """The PIDs still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def kill_leftovers(pids: list[int]) -> None:
    # A failed test must not leak sleepers into the rest of the session.
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


@dataclass
class Ran:
    """What an in-process ``labq`` command printed, and its exit status."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def labq_cli_in_process(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """``labq ARGS`` run by its console entry point (``labq.cli.run``) in this
    process, from the directory ``tmp``, with the session stack's settings as
    ``LABQ_*`` (and ``env``): as a shell would, without a new interpreter."""
    from labq import cli

    def call(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Ran:
        for name in [k for k in os.environ if k.startswith("LABQ_")]:
            monkeypatch.delenv(name)
        for name, value in {**stack.settings.replace(state_dir=tmp).to_env(),
                            **(env or {})}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp)
        capsys.readouterr()
        try:
            cli.run(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return call


@dataclass
class SideLab:
    """Workers of their own on a database of the session's Redis (see :func:`side_workers`)."""

    settings: Settings
    #: Worker name -> its process (the main one; kill_tree takes the rest).
    workers: dict[str, subprocess.Popen[bytes]]

    def node(self, name: str) -> str:
        return node_name(name)


@contextmanager
def side_workers(stack: Stack, db: int, names: Sequence[str], tmp: Path,
                 queues: Sequence[str] = ("labq",), **changes: object) -> Iterator[SideLab]:
    """Prefork workers ``names`` (two slots each) with settings ``changes``,
    on database ``db`` of the session stack's Redis and its simulated lab:
    cheaper than a stack of their own, and nothing they do (leases, runs,
    heartbeats) meets the session workers'. The database is flushed first."""
    base = stack.settings.broker_url.rsplit("/", 1)[0]
    settings = stack.settings.replace(broker_url=f"{base}/{db}", state_dir=tmp, concurrency=2,
                                      **changes)
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    env = child_env(settings)
    procs = {name: spawn(worker_argv(settings, name, queues), log_path=tmp / f"{name}.log",
                         env=env, cwd=PROJECT_ROOT) for name in names}
    try:
        end = time.monotonic() + 60
        while not all(client.exists(worker_key(node_name(n))) for n in names):
            dead = [n for n, p in procs.items() if p.poll() is not None]
            assert not dead, f"workers {dead} exited; see {tmp}"
            assert time.monotonic() < end, f"workers {list(names)} not up in 60 s; see {tmp}"
            time.sleep(0.1)
        yield SideLab(settings, procs)
    finally:
        stop_trees(list(procs.values()), timeout=10)
        client.flushdb()
        client.close()
