"""The soft interrupt reaches a task's body, and nothing else in its child.

billiard's SIGUSR1 handler raises ``SoftTimeLimitExceeded`` wherever the
prefork child is. labq's cancel interrupts with the same signal, sent to the
tasks a run sees running, and on a busy host it can land after the task's
body has ended: in Celery's result handling (stored as a soft time limit) or
in the write of the result to the main process (``MaybeEncodingError``).
Both happened in 2 of 8 runs of ``test_run_end_to_end_as_three_users``.

:func:`armed` (entered by :class:`labq.worker.task_base.LabqTask` around the body)
lets the interrupt through; outside it, the interrupt is dropped: the task
it was meant for has already ended. The hard limit is unaffected.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)

#: billiard's soft time limit signal, which labq's cancel sends too.
SOFT_SIGNAL = signal.SIGUSR1

_armed = False
#: Whether a soft interrupt was raised inside the current (or last) block.
_delivered = False


def _on_soft_signal(signum: int, frame: FrameType | None) -> None:
    global _delivered
    if _armed:
        _delivered = True
        raise SoftTimeLimitExceeded()
    log.info("a soft interrupt arrived after its task had ended; ignored")


def delivered() -> bool:
    """Whether a soft interrupt was raised inside the last :func:`armed` block.

    Library code can turn the ``SoftTimeLimitExceeded`` into an error of its
    own (paramiko, interrupted while it connects, raises ``KeyError`` from its
    cleanup); the task is still one that was interrupted.
    """
    return _delivered


@contextmanager
def armed() -> Iterator[None]:
    """Deliver soft interrupts as ``SoftTimeLimitExceeded`` inside the block.

    Call from the prefork child's main thread: the handler replaces
    billiard's on first use (billiard installs its own after the child's
    initializers have run).
    """
    global _armed, _delivered
    if threading.current_thread() is not threading.main_thread():
        yield  # an eager call in a thread: no signal reaches it anyway
        return
    if signal.getsignal(SOFT_SIGNAL) is not _on_soft_signal:
        signal.signal(SOFT_SIGNAL, _on_soft_signal)
    _delivered = False
    _armed = True
    try:
        yield
    finally:
        _armed = False
