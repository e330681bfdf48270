"""labq.worker.interrupt: the soft interrupt reaches a task's body and nothing after it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from labq.worker.interrupt import SOFT_SIGNAL, armed


@pytest.fixture(autouse=True)
def own_handler() -> Iterator[None]:
    before = signal.getsignal(SOFT_SIGNAL)
    yield
    signal.signal(SOFT_SIGNAL, before)


def interrupt() -> None:
    os.kill(os.getpid(), SOFT_SIGNAL)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary


def test_inside_the_body_the_interrupt_raises() -> None:
    with pytest.raises(SoftTimeLimitExceeded), armed():
        interrupt()


def test_after_the_body_the_interrupt_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with armed():
        pass
    with caplog.at_level("INFO", logger="labq.worker.interrupt"):
        interrupt()  # no exception: the task it was meant for has ended
    assert "after its task had ended" in caplog.text


def test_an_interrupt_inside_a_log_line_to_the_run_is_not_swallowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from labq.worker import task_base

    class Interrupted:
        def xadd(self, *_: object, **__: object) -> None:
            raise SoftTimeLimitExceeded()

    monkeypatch.setattr(task_base.current, "run_id", "r1")
    monkeypatch.setattr(task_base.current, "client", Interrupted())
    record = logging.LogRecord("tasks.x", logging.INFO, __file__, 1, "hello", None, None)
    with pytest.raises(SoftTimeLimitExceeded):
        task_base.RunLogHandler().emit(record)
