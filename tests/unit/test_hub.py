"""labq.worker.hub: the worker's event loop skips removals of writers it does not watch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.asynchronous.timer import Timer

from labq.worker.hub import LabqHub


class CountingPoller:
    """The hub's poller, with its register and unregister calls counted."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, []

    def register(self, fd: int, events: int) -> Any:
        self.calls.append(("register", fd))
        return self.inner.register(fd, events)

    def unregister(self, fd: int) -> Any:
        self.calls.append(("unregister", fd))
        return self.inner.unregister(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture()
def hub() -> Iterator[LabqHub]:
    h = LabqHub(Timer())  # type: ignore[no-untyped-call]
    h.poller = CountingPoller(h.poller)
    yield h
    h.close()  # type: ignore[no-untyped-call]


@pytest.fixture()
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_removing_an_unwatched_writer_makes_no_system_call(
        hub: LabqHub, pipe: tuple[int, int]) -> None:
    hub.remove_writer(pipe[1])
    assert hub.poller.calls == []


def test_a_watched_writer_is_removed(hub: LabqHub, pipe: tuple[int, int]) -> None:
    hub.add_writer(pipe[1], lambda: None)  # type: ignore[no-untyped-call]
    hub.remove_writer(pipe[1])
    assert pipe[1] not in hub.writers
    assert hub.poller.calls == [("register", pipe[1]), ("unregister", pipe[1])]


def test_a_reader_stays_when_no_writer_is_removed(hub: LabqHub, pipe: tuple[int, int]) -> None:
    hub.add_reader(pipe[0], lambda: None)  # type: ignore[no-untyped-call]
    hub.remove_writer(pipe[0])
    assert pipe[0] in hub.readers
    assert hub.poller.calls == [("register", pipe[0])]


def test_workers_run_on_it() -> None:
    import logging

    from celery._state import _set_task_join_will_block, task_join_will_block
    from celery.app.trace import reset_worker_optimizations

    from labq.app import create_app
    from labq.settings import Settings

    # Building a worker changes this process: paramiko's logger
    # (labq.worker.prefork.quiet_paramiko), Celery's tracer and its join guard. Undone
    # after, or later tests in this process could not wait for results.
    paramiko = logging.getLogger("paramiko")
    level, will_block = paramiko.level, task_join_will_block()
    app = create_app(Settings.load(env={}, config_file=os.devnull))
    try:
        worker = app.Worker(pool="prefork", concurrency=1)
        assert worker._conninfo.requires_hub is LabqHub
    finally:
        paramiko.setLevel(level)
        reset_worker_optimizations(app)
        _set_task_join_will_block(will_block)
