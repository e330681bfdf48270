"""Diagnostic tasks for tests, benchmarks and checking a lab end to end."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)


def _where() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


@shared_task(name="tasks.diag.echo")
def echo(value: Any = None) -> Any:
    """Return ``value`` unchanged: the smallest round trip."""
    return value


@shared_task(name="tasks.diag.sleep")
def sleep(seconds: float = 1.0) -> dict[str, Any]:
    """Sleep ``seconds``, logging before and after; interruptible by the soft limit."""
    log.info("sleeping %.1f s", seconds)
    time.sleep(seconds)
    log.info("slept %.1f s", seconds)
    return {"slept": seconds, **_where()}


@shared_task(name="tasks.diag.burn")
def burn(seconds: float = 1.0) -> dict[str, Any]:
    """Keep one core busy for ``seconds``, counting loop turns."""
    end = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < end:
        turns += 1
    return {"turns": turns, **_where()}


@shared_task(name="tasks.diag.stubborn")
def stubborn(seconds: float = 3600.0) -> dict[str, Any]:
    """Swallow ``SoftTimeLimitExceeded`` and keep sleeping.

    Only the hard limit stops this task, which is what it is for.
    """
    end = time.monotonic() + seconds
    interrupted = 0
    while time.monotonic() < end:
        try:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        except SoftTimeLimitExceeded:
            interrupted += 1
            log.warning("ignoring the soft time limit (%d)", interrupted)
    return {"interrupted": interrupted, **_where()}


@shared_task(name="tasks.diag.fail")
def fail(message: str = "diag failure") -> None:
    """Raise ``RuntimeError(message)``, to exercise failure reporting."""
    raise RuntimeError(message)
