"""Fixtures that start real services and clean them up.

Redis comes from the same launcher as ``labq up``; workers are real prefork
workers started as ``celery -A tasks worker`` processes by :class:`Stack`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from labq.app import LabqCelery, create_app
from labq.redis_server import RedisServer
from labq.settings import Settings
from labq.stack import Stack, WorkerSpec

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


def stack_settings(tmp: Path, **changes: object) -> Settings:
    base = {"state_dir": tmp, "flower_port": 0, "concurrency": 2,
            "soft_time_limit": 20.0, "time_limit": 30.0, "shutdown_timeout": 5.0}
    base.update(changes)
    return Settings.load(env={}, config_file=os.devnull, **base)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded stack: Redis, workers lab-a and lab-b, and Flower."""
    s = Stack(stack_settings(tmp_path_factory.mktemp("stack")),
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


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    need(path is not None, "chromium is not installed (apt-get install chromium chromium-driver)")
    assert path
    return path
