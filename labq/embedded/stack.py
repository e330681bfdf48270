"""The embedded stack behind ``labq up`` and ``labq demo``.

Redis (password, loopback, AOF), one prefork worker per simulated lab host,
and Flower (basic auth, Prometheus ``/metrics``), all as child processes in
their own process groups. :meth:`Stack.stop` leaves none of them behind.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from labq.devices.testbed_yaml import load_testbed
from labq.embedded.ports import free_port, port_free
from labq.embedded.processes import spawn, stop_trees
from labq.embedded.redis_server import RedisServer
from labq.embedded.sim.process import SimProcess
from labq.errors import StackError
from labq.settings import Settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # labq/embedded/stack.py


@dataclass(frozen=True)
class WorkerSpec:
    """One simulated lab host: a worker named ``name`` serving ``queues``."""

    name: str
    queues: tuple[str, ...]
    concurrency: int | None = None


DEFAULT_WORKERS = (WorkerSpec("lab-a", ("lab-a",)), WorkerSpec("lab-b", ("lab-b",)))


def node_name(name: str) -> str:
    """The Celery node name of worker ``name`` on this host."""
    return f"{name}@{socket.gethostname()}"


def worker_argv(settings: Settings, name: str, queues: Sequence[str],
                concurrency: int | None = None, loglevel: str = "INFO") -> list[str]:
    """The ``celery worker`` command line labq runs a lab host's worker with.

    The worker consumes ``queues`` plus the default queue, in the prefork pool,
    with task events on.
    """
    all_queues = list(dict.fromkeys([*queues, settings.default_queue]))
    return [
        sys.executable, "-m", "celery", "-A", "tasks", "worker",
        "--pool", "prefork",
        "--concurrency", str(concurrency or settings.concurrency),
        "--queues", ",".join(all_queues),
        "--hostname", node_name(name),
        "--task-events",
        "--loglevel", loglevel,
    ]


#: Flower's ``tasks_columns`` unless FLOWER_TASKS_COLUMNS says otherwise.
FLOWER_TASKS_COLUMNS = "name,kwargs,state,worker,received,runtime,uuid"


def flower_argv(settings: Settings) -> list[str]:
    """The ``celery flower`` command line; auth travels in the environment."""
    return [
        sys.executable, "-m", "celery", "-A", "tasks", "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
    ]


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for a service process: labq settings and Flower's auth.

    Paths are made absolute: the child may run from another directory.
    """
    settings = settings.replace(testbed=settings.testbed.resolve(),
                                state_dir=settings.state_dir.resolve())
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    # Flower's task list: which device (and run) each task is for, first.
    env.setdefault("FLOWER_TASKS_COLUMNS", FLOWER_TASKS_COLUMNS)
    if settings.flower_password:
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{settings.flower_password}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class Stack:
    """Redis, lab-host workers and Flower, started and stopped together."""

    settings: Settings
    workers: Sequence[WorkerSpec] = DEFAULT_WORKERS
    redis_port: int = 0
    with_flower: bool = True
    #: Also serve the lab's Prometheus metrics (``labq exporter``; ``labq up`` does).
    with_exporter: bool = False
    #: Start the simulated lab for ``settings.testbed``.
    with_sim: bool = True
    ready_timeout: float = 60.0
    redis: RedisServer | None = None
    sim: SimProcess | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def flower_url(self) -> str:
        return f"http://{self.settings.flower_address}:{self.settings.flower_port}"

    @property
    def node_names(self) -> list[str]:
        return [node_name(w.name) for w in self.workers]

    def start(self) -> Stack:
        """Start every part and wait until each is ready; on failure, stop all."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_ports(self) -> None:
        """Refuse, naming them, ports another process holds: a second ``labq up``
        or ``labq demo`` on the same testbed would otherwise die in the sim."""
        wanted: list[tuple[str, int, str]] = []
        if self.with_sim:
            for device in load_testbed(self.settings.testbed):
                for conn in device.connections.values():
                    if conn.ip and conn.port and not device.sim.get("unreachable"):
                        wanted.append((conn.ip, conn.port, f"device {device.name}"))
        if self.redis_port:
            wanted.append(("127.0.0.1", self.redis_port, "Redis"))
        if self.with_flower and self.settings.flower_port:
            wanted.append((self.settings.flower_address, self.settings.flower_port, "Flower"))
        if self.with_exporter and self.settings.exporter_port:
            wanted.append((self.settings.exporter_address, self.settings.exporter_port,
                           "the metrics exporter"))
        taken = [(host, port, what) for host, port, what in wanted if not port_free(host, port)]
        if taken:
            shown = ", ".join(f"{port} ({what})" for _, port, what in taken[:6])
            more = f" and {len(taken) - 6} more" if len(taken) > 6 else ""
            raise StackError(
                f"ports {shown}{more} are in use, most likely by another labq up or labq demo: "
                "stop it (Ctrl-C in its shell), or pick other ports: --redis-port 0 "
                "--flower-port 0, and a testbed whose devices use free ports (LABQ_TESTBED)")

    def _start(self) -> None:
        self._check_ports()
        if self.with_sim:
            self.sim = SimProcess(self.settings.testbed, state_dir=self.state_dir / "sim",
                                  log_path=self.log_dir / "sim.log").start()
        self.redis = RedisServer(
            data_dir=self.state_dir / "redis", port=self.redis_port,
            binary=self.settings.redis_server,
        ).start()
        flower_port = self.settings.flower_port or free_port()
        self.settings = self.settings.replace(
            broker_url=self.redis.url,
            result_backend="",
            flower_port=flower_port,
            exporter_port=self.settings.exporter_port or free_port(),
            flower_password=self.settings.flower_password or secrets.token_urlsafe(12),
        )
        env = child_env(self.settings)
        for spec in self.workers:
            self.processes[spec.name] = spawn(
                worker_argv(self.settings, spec.name, spec.queues, spec.concurrency),
                log_path=self.log_dir / f"{spec.name}.log", env=env, cwd=PROJECT_ROOT,
            )
        if self.with_flower:
            self.processes["flower"] = spawn(
                flower_argv(self.settings), log_path=self.log_dir / "flower.log",
                env=env, cwd=PROJECT_ROOT,
            )
        if self.with_exporter:
            self.processes["exporter"] = spawn(
                [sys.executable, "-m", "labq", "exporter"],
                log_path=self.log_dir / "exporter.log", env=env, cwd=PROJECT_ROOT,
            )
        self._wait_workers()
        if self.with_flower:
            self._wait_flower()
        if self.with_exporter:
            self._wait_exporter()

    def check_alive(self) -> None:
        """Raise :class:`StackError` naming the first part that has exited."""
        if self.redis and self.redis.process and self.redis.process.poll() is not None:
            raise StackError(f"redis-server exited; see {self.state_dir / 'redis/redis.log'}")
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise StackError(f"{name} exited with {proc.returncode}; its log ends:\n{tail}")

    def _wait_workers(self) -> None:
        from labq.app import create_app

        app = create_app(self.settings)
        deadline = time.monotonic() + self.ready_timeout
        pending = set(self.node_names)
        try:
            while pending:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise StackError(f"workers not ready in {self.ready_timeout} s: {sorted(pending)}")
                for reply in app.control.ping(destination=sorted(pending), timeout=0.5):
                    pending -= set(reply)
        finally:
            app.close()

    def _wait_flower(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self.check_alive()
            try:
                workers = self.flower_get("/api/workers?refresh=1")
                if all(n in workers for n in self.node_names):
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"Flower at {self.flower_url} not ready in {self.ready_timeout} s")
            time.sleep(0.3)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.exporter_address}:{self.settings.exporter_port}/metrics"

    def _wait_exporter(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"the metrics exporter at {self.metrics_url} not ready in "
                                 f"{self.ready_timeout} s; see {self.log_dir / 'exporter.log'}")
            time.sleep(0.3)

    def flower_get(self, path: str) -> str:
        """GET ``path`` from Flower with the stack's credentials."""
        token = base64.b64encode(
            f"{self.settings.flower_user}:{self.settings.flower_password}".encode()
        ).decode()
        req = urllib.request.Request(self.flower_url + path,
                                     headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(resp.read().decode())

    def stop(self) -> None:
        """Warm-stop the workers and Flower, then Redis; kill what lingers."""
        stop_trees(list(self.processes.values()), timeout=self.settings.shutdown_timeout + 5)
        self.processes.clear()
        if self.redis:
            self.redis.stop()
        if self.sim:
            self.sim.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def export_line(self) -> str:
        """The shell line that points another shell's labq and celery at this
        stack and its testbed, from any directory."""
        return (f"export LABQ_BROKER_URL='{self.settings.broker_url}' "
                f"LABQ_TESTBED='{self.settings.testbed.resolve()}'")
