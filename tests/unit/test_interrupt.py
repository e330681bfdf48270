"""labq.interrupt: the soft interrupt reaches a task's body and nothing after it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from labq.interrupt import SOFT_SIGNAL, armed


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
    with caplog.at_level("INFO", logger="labq.interrupt"):
        interrupt()  # no exception: the task it was meant for has ended
    assert "after its task had ended" in caplog.text
