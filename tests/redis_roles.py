"""A Redis run from the shipped config/redis.conf and config/users.acl, and
labq's three roles on it: workers as ``worker``, Flower as ``flower`` and
testscripts as ``client`` (docs/redis.md).

Used by test_redis_acl.py and test_redis_tls.py.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from labq.app import create_app
from labq.embedded.ports import free_port
from labq.embedded.processes import spawn, stop_trees
from labq.embedded.stack import PROJECT_ROOT, child_env, flower_argv, node_name, worker_argv
from labq.errors import StackError
from labq.settings import Settings

CONFIG = PROJECT_ROOT / "config"
USERS = ("worker", "client", "flower", "admin")


def redis_server_major() -> int:
    """The major version of the redis-server on PATH; 0 if there is none."""
    binary = shutil.which("redis-server")
    if not binary:
        return 0
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\d+)\.", out)
    return int(found.group(1)) if found else 0


def acl_with_passwords(passwords: dict[str, str]) -> str:
    """config/users.acl with each CHANGE-ME placeholder replaced."""
    text = (CONFIG / "users.acl").read_text()
    for user, password in passwords.items():
        assert f">CHANGE-ME-{user} " in text, f"no placeholder for {user} in users.acl"
        text = text.replace(f">CHANGE-ME-{user} ", f">{password} ")
    assert "CHANGE-ME" not in text
    return text


@dataclass
class AclRedis:
    """redis-server with config/redis.conf, its ACL users from config/users.acl.

    Loopback only; with ``tls`` (cert, key, CA paths) it serves TLS only,
    and asks clients for a certificate signed by that CA.
    """

    data_dir: Path
    tls: tuple[Path, Path, Path] | None = None
    port: int = 0
    passwords: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> AclRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.passwords = self.passwords or {u: secrets.token_hex(12) for u in USERS}
        acl = self.data_dir / "users.acl"
        acl.write_text(acl_with_passwords(self.passwords))
        acl.chmod(0o600)
        argv = [shutil.which("redis-server") or "redis-server", str(CONFIG / "redis.conf"),
                "--bind", "127.0.0.1", "--dir", str(self.data_dir.resolve()),
                "--aclfile", str(acl.resolve()), "--maxmemory", "256mb"]
        if self.tls:
            cert, key, ca = self.tls
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                     "--tls-auth-clients", "yes"]
        else:
            argv += ["--port", str(self.port)]
        self.process = spawn(argv, log_path=self.data_dir / "redis.log")
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise StackError(f"redis-server exited with {self.process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise StackError(f"redis-server on port {self.port} not ready in {timeout} s")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        log = self.data_dir / "redis.log"
        return log.exists() and "Ready to accept connections" in log.read_text(errors="replace")

    def url(self, user: str) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            stop_trees([self.process], timeout=10)
            self.process = None


@dataclass
class Roles:
    """Workers, Flower and a client app, each on Redis as its own ACL user."""

    base: Settings
    server: AclRedis
    workers: Sequence[tuple[str, tuple[str, ...]]] = (("lab-a", ("lab-a",)), ("lab-b", ("lab-b",)))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    flower_port: int = 0
    flower_password: str = ""

    def settings(self, user: str) -> Settings:
        return self.base.replace(broker_url=self.server.url(user), result_backend="",
                                 flower_port=self.flower_port,
                                 flower_password=self.flower_password)

    def start(self, timeout: float = 90.0) -> Roles:
        self.flower_port = free_port()
        self.flower_password = secrets.token_hex(8)
        logs = self.base.state_dir / "logs"
        worker = self.settings("worker")
        for name, queues in self.workers:
            self.processes.append(spawn(worker_argv(worker, name, queues),
                                        log_path=logs / f"{name}.log",
                                        env=child_env(worker), cwd=PROJECT_ROOT))
        flower = self.settings("flower")
        self.processes.append(spawn(flower_argv(flower), log_path=logs / "flower.log",
                                    env=child_env(flower), cwd=PROJECT_ROOT))
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        app = create_app(self.settings("client"))
        deadline = time.monotonic() + timeout
        pending = {node_name(name) for name, _ in self.workers}
        try:
            while pending:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise StackError(f"workers not ready: {sorted(pending)}; see "
                                     f"{self.base.state_dir / 'logs'}")
                for reply in app.control.ping(destination=sorted(pending), timeout=0.5):
                    pending -= set(reply)
        finally:
            app.close()
        while not all(node_name(n) in self.flower_workers() for n, _ in self.workers):
            self.check_alive()
            if time.monotonic() > deadline:
                raise StackError("Flower does not list the workers")
            time.sleep(0.5)

    def check_alive(self) -> None:
        for proc in self.processes:
            if proc.poll() is not None:
                raise StackError(f"{proc.args!r} exited with {proc.returncode}; see "
                                 f"{self.base.state_dir / 'logs'}")

    def flower(self, path: str, method: str = "GET") -> str:
        token = base64.b64encode(f"{self.base.flower_user}:{self.flower_password}".encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.flower_port}{path}", method=method,
                                     headers={"Authorization": f"Basic {token.decode()}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.read().decode())

    def flower_workers(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.flower("/api/workers?refresh=1")))
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        stop_trees(self.processes, timeout=self.base.shutdown_timeout + 5)
        self.processes.clear()


def client_for(server: AclRedis, user: str, **kwargs: object) -> redis.Redis:
    return redis.Redis.from_url(server.url(user), **kwargs)  # type: ignore[arg-type]
