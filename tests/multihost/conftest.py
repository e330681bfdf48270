"""The multi-host lab for tests: ``deploy/netns/labnet.sh`` builds the network,
:class:`NetLab` runs the services in it and gives the tests their levers.

Redis and Flower run in the central namespace, one simulated lab per segment
namespace, one prefork worker per lab-host namespace. This process reaches
Redis and Flower through the root veth; only the lab hosts reach the devices.
Teardown removes every ``lq-`` namespace, link and process, and fails the
session if one is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import need
from labq.app import LabqCelery, create_app
from labq.embedded.netlab import Topology, write_testbeds
from labq.embedded.processes import spawn, stop_trees, tree
from labq.embedded.redis_server import RedisServer, find_redis_server
from labq.embedded.stack import PROJECT_ROOT, child_env, flower_argv, node_name, worker_argv
from labq.settings import Settings

LABNET = PROJECT_ROOT / "deploy" / "netns" / "labnet.sh"
PREFIX = "lq"
#: Simulated devices per segment, each on its own address.
DEVICES = 12
#: Seconds each device takes per command: a `show version` task takes about 0.5-1 s.
LATENCY = 0.12
#: Settings of the lab's workers and clients; a test module may need others
#: (worker_ttl for host-death tests) and restarts the workers with them.
LAB_SETTINGS: dict[str, Any] = {
    "concurrency": 2, "soft_time_limit": 20.0, "time_limit": 30.0, "shutdown_timeout": 20.0,
}
BASE_HOSTS = {"lab-a": "lab-a", "lab-b": "lab-b"}


def labnet(state: Path, *args: str, **env: str) -> str:
    """Run ``labnet.sh`` with the lab's state directory; its stdout."""
    done = subprocess.run(["bash", str(LABNET), *args], capture_output=True, text=True,
                          env={**os.environ, "LQ_STATE_DIR": str(state), "LQ_PREFIX": PREFIX,
                               "LQ_PYTHON": sys.executable, **env}, timeout=120)
    if done.returncode:
        raise RuntimeError(f"labnet.sh {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def leftovers() -> list[str]:
    """Every ``lq-`` namespace and root-namespace link still there."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = [f"netns {n.split()[0]}" for n in names.splitlines() if n.startswith(f"{PREFIX}-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
             if line.split(":")[1].strip().startswith(f"{PREFIX}-")]
    return left


def netns_pids(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


class NetLab:
    """The running multi-host lab and the levers the tests pull.

    Hosts are named as in the topology (``lab-a``, ``lab-b``, ``lab-a2``);
    each runs at most one worker, whose Celery node is :meth:`node`.
    """

    def __init__(self, state: Path) -> None:
        self.state = state
        self.logs = state / "logs"
        self.pids = state / "pids"
        self.topology: Topology | None = None
        self.settings: Settings | None = None
        self.redis: RedisServer | None = None
        self.flower: subprocess.Popen[bytes] | None = None
        self.sims: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[int] = []  # every pid this lab started, for the teardown check

    # -- building and tearing down ----------------------------------------

    def start(self) -> NetLab:
        """Build the network and start Redis, Flower, the simulated labs and a
        worker on ``lab-a`` and ``lab-b``; on failure, tear everything down."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        labnet(self.state, "down")  # what a crashed session left behind
        labnet(self.state, "net-up", LQ_DEVICES=str(DEVICES),
               LQ_HOSTS=" ".join(f"{h}:{q}" for h, q in BASE_HOSTS.items()))
        topo = self.topology = Topology.read(self.state / "topology")
        password = f"netlab-{secrets.token_hex(6)}"
        testbed, per_segment = write_testbeds(topo, self.state, sim={"latency": LATENCY},
                                              max_sessions=4, password=password)
        for queue, path in per_segment.items():
            self._start_sim(queue, path)
        self.redis = RedisServer(data_dir=self.state / "redis", port=6379, host=topo.central_ip,
                                 binary=str(self._in_central(find_redis_server())))
        self.redis.start()
        assert self.redis.process is not None
        self._record("redis", self.redis.process)
        self.settings = Settings.load(
            env={}, config_file=os.devnull, state_dir=self.state, testbed=testbed,
            broker_url=self.redis.url, flower_address=topo.central_ip, flower_port=5555,
            flower_password=secrets.token_urlsafe(12), **LAB_SETTINGS)
        self.flower = self._spawn("flower", f"{PREFIX}-central", flower_argv(self.settings))
        for host in BASE_HOSTS:
            self.start_worker(host, wait=False)
        for host in BASE_HOSTS:
            self.wait_worker(host)
        self._wait_flower()

    def _in_central(self, binary: Path) -> Path:
        # RedisServer starts its binary directly; this one enters the namespace first.
        wrapper = self.state / "bin" / "redis-server-central"
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {PREFIX}-central {binary} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def _record(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        # labnet.sh down kills recorded pids too, should this process die first.
        self.pids.mkdir(parents=True, exist_ok=True)
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        self.started.append(proc.pid)

    def _spawn(self, name: str, namespace: str, argv: list[str]) -> subprocess.Popen[bytes]:
        assert self.settings is not None
        proc = spawn(["ip", "netns", "exec", namespace, *argv], log_path=self.logs / f"{name}.log",
                     env=child_env(self.settings), cwd=PROJECT_ROOT)
        self._record(name, proc)
        return proc

    def _start_sim(self, queue: str, testbed: Path) -> None:
        assert self.topology is not None
        ready = self.state / f"sim-{queue}.ready"
        ready.unlink(missing_ok=True)
        proc = spawn(["ip", "netns", "exec", self.topology.segments[queue].namespace,
                      sys.executable, "-m", "labq.embedded.sim", "--testbed", str(testbed),
                      "--control-port", "0", "--ready-file", str(ready)],
                     log_path=self.logs / f"sim-{queue}.log", cwd=PROJECT_ROOT)
        self._record(f"sim-{queue}", proc)
        self.sims[queue] = proc
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, self.log_tail(f"sim-{queue}")
            assert time.monotonic() < deadline, f"simulated lab {queue} not ready in 60 s"
            time.sleep(0.05)

    def _wait_flower(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.flower is not None and self.flower.poll() is None, self.log_tail("flower")
            try:
                workers = json.loads(self.flower_get("/api/workers?refresh=1"))
                if all(self.node(h) in workers for h in self.workers):
                    return
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, f"Flower not ready in {timeout} s"
            time.sleep(0.3)

    def stop(self) -> list[str]:
        """Stop everything and remove the network; returns what is left (nothing)."""
        procs = [*self.workers.values(), *([self.flower] if self.flower else []),
                 *self.sims.values()]
        stop_trees(procs, timeout=LAB_SETTINGS["shutdown_timeout"] + 5)
        self.workers.clear()
        self.sims.clear()
        self.flower = None
        if self.redis is not None:
            self.redis.stop()
        labnet(self.state, "down")
        alive = [p for p in self.started if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        return leftovers() + [f"process {p}" for p in alive]

    # -- what the tests use -------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        """Every lab host in the topology, with or without a running worker."""
        assert self.topology is not None
        return list(self.topology.hosts)

    def node(self, host: str) -> str:
        """The Celery node name of ``host``'s worker (``lab-a@<machine>``)."""
        return node_name(host)

    def settings_for_client(self, **changes: Any) -> Settings:
        """Settings that point a client (a Run, an app, the CLI) at this lab."""
        assert self.settings is not None
        return self.settings.replace(**changes) if changes else self.settings

    def reconfigure(self, **changes: Any) -> None:
        """Change the lab's settings (``worker_ttl=3``, ...) and warm-restart every
        running worker with them; clients get them from :meth:`settings_for_client`."""
        assert self.settings is not None
        self.settings = self.settings.replace(**changes)
        hosts = [h for h in self.workers if self.running(h)]
        for host in hosts:
            self.stop_worker(host)
        for host in hosts:
            self.start_worker(host, wait=False)
        for host in hosts:
            self.wait_worker(host)

    def app(self) -> LabqCelery:
        """A client Celery app for the lab; close it after use."""
        return create_app(self.settings_for_client())

    def devices(self, queue: str) -> list[str]:
        """The device names of segment ``queue``: ``a1``, ``a2``, ..."""
        assert self.topology is not None
        return self.topology.segments[queue].device_names()

    def device_ip(self, device: str) -> str:
        assert self.topology is not None
        for segment in self.topology.segments.values():
            if device in segment.device_names():
                return segment.device_ips[segment.device_names().index(device)]
        raise KeyError(device)

    def add_host(self, name: str, queue: str, start: bool = True) -> None:
        """Attach lab host ``name`` to the core and to segment ``queue`` (once),
        then start its worker unless one runs; returns when it answers a ping."""
        assert self.topology is not None
        if name not in self.topology.hosts:
            labnet(self.state, "add-host", name, queue)
            self.topology = Topology.read(self.state / "topology")
        if start and not self.running(name):
            self.start_worker(name)

    def running(self, host: str) -> bool:
        proc = self.workers.get(host)
        return proc is not None and proc.poll() is None

    def start_worker(self, host: str, wait: bool = True, concurrency: int | None = None) -> None:
        """Start ``host``'s worker for its segment's queue (and the default queue)."""
        assert self.topology is not None and self.settings is not None
        assert not self.running(host), f"{host} already runs a worker"
        spec = self.topology.hosts[host]
        self.workers[host] = self._spawn(
            f"worker-{host}", spec.namespace,
            worker_argv(self.settings, host, [spec.queue], concurrency))
        if wait:
            self.wait_worker(host)

    def wait_worker(self, host: str, timeout: float = 60.0) -> None:
        """Until ``host``'s worker answers a ping through Redis."""
        app = self.app()
        deadline = time.monotonic() + timeout
        try:
            while not app.control.ping(destination=[self.node(host)], timeout=0.5):
                assert self.running(host), self.log_tail(f"worker-{host}")
                assert time.monotonic() < deadline, f"{host} not ready in {timeout} s"
        finally:
            app.close()

    def stop_worker(self, host: str, warm: bool = True, timeout: float | None = None) -> int:
        """SIGTERM (warm: running tasks finish, queued ones go back) or SIGQUIT
        (cold) ``host``'s worker and wait for it to exit; returns its exit code."""
        proc = self.workers.pop(host)
        proc.send_signal(signal.SIGTERM if warm else signal.SIGQUIT)
        try:
            return proc.wait(timeout=timeout or LAB_SETTINGS["shutdown_timeout"] + 15)
        finally:
            stop_trees([proc], timeout=1)

    def kill_worker_tree(self, host: str) -> list[int]:
        """SIGKILL ``host``'s worker: the main process, every descendant and
        anything else in the host's namespace, all at once. Returns the pids."""
        assert self.topology is not None
        proc = self.workers.pop(host)
        os.kill(proc.pid, signal.SIGSTOP)  # no new child between the listing and the kill
        members = {p.pid: p for p in tree(proc.pid)}
        for pid in netns_pids(self.topology.hosts[host].namespace):
            try:
                members.setdefault(pid, psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for member in members.values():
            try:
                member.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=10)
        psutil.wait_procs(list(members.values()), timeout=10)
        return sorted(members)

    def cut(self, host: str) -> None:
        """Take ``host``'s switch port to the core down: its packets vanish, its
        processes and sockets stay (a pulled cable on the switch side)."""
        labnet(self.state, "cut", host)

    def restore(self, host: str) -> None:
        labnet(self.state, "restore", host)

    def connect(self, host: str, ip: str, port: int = 22, timeout: float = 3.0) -> str | None:
        """Open a TCP connection from ``host`` (a lab host, ``central`` or
        ``seg-<queue>``); ``None`` when it connects, else the error."""
        code = ("import socket, sys\n"
                "try:\n"
                f"    socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
                "except OSError as exc:\n"
                "    sys.exit(f'{type(exc).__name__}: {exc}')\n")
        namespace = f"{PREFIX}-{host}"
        done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=timeout + 30)
        return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")

    def flower_get(self, path: str) -> str:
        """GET ``path`` from Flower on the central host, with the lab's credentials."""
        s = self.settings_for_client()
        token = b64encode(f"{s.flower_user}:{s.flower_password}".encode()).decode()
        request = urllib.request.Request(f"http://{s.flower_address}:{s.flower_port}{path}",
                                         headers={"Authorization": f"Basic {token}"})
        # No proxy: the lab's addresses exist only on this machine.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else f"(no {path})"

    def reset(self) -> None:
        """Back to the base lab: every link up, workers on lab-a and lab-b only."""
        for host in self.hosts:
            self.restore(host)
        for host in [h for h in self.workers if h not in BASE_HOSTS]:
            self.stop_worker(host, warm=False)
        for host in BASE_HOSTS:
            if not self.running(host):
                self.workers.pop(host, None)
                self.start_worker(host)


def _can_build() -> bool:
    """Root, iproute2, and a kernel (or container) that lets us make a namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"{PREFIX}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


@pytest.fixture(scope="session")
def netlab_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    """The lab, built once per session; teardown fails if anything ``lq-`` is left."""
    need(_can_build(), "multihost tests need root, iproute2's `ip` and the right to "
                       "create network namespaces (CAP_SYS_ADMIN)")
    lab = NetLab(tmp_path_factory.mktemp("netlab")).start()
    yield lab
    left = lab.stop()
    assert not left, f"the lab left these behind: {left}"


@pytest.fixture()
def netlab(netlab_session: NetLab) -> NetLab:
    """The session's lab, reset to the base: links up, workers on lab-a and lab-b only."""
    netlab_session.reset()
    return netlab_session
