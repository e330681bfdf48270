"""Ctrl-C and SIGTERM in a testscript: both stop its run the same way.

Python turns Ctrl-C into ``KeyboardInterrupt``; a SIGTERM (a CI job being
stopped, ``timeout 60 python script.py``) would kill the process outright
and leave its tasks running with their leases. While a run waits,
:func:`sigterm_interrupts` turns SIGTERM into :class:`Terminated`, a
``KeyboardInterrupt``, so both reach the run's stop
(:meth:`labq.Run.stop`), which cancels the run and ends the testscript
with :class:`labq.errors.RunInterrupted`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn, Protocol

from rich.console import Console

from labq.client.report import outcome_table
from labq.errors import LabqError, RunInterrupted
from labq.outcome import Outcome, Status

#: Exit statuses, as a shell reports a process ended by the signal.
SIGINT_STATUS = 128 + signal.SIGINT
SIGTERM_STATUS = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while a run waits."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread.

    Only where SIGTERM still has its default action: a handler the
    testscript installed itself is left alone, and so is a thread other than
    the main one (signals reach only the main thread).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_status(exc: BaseException) -> int:
    """The status a testscript stopped by ``exc`` exits with."""
    return SIGTERM_STATUS if isinstance(exc, Terminated) else SIGINT_STATUS


class Stoppable(Protocol):
    """What :func:`stop_run` needs of a run (:class:`labq.Run`)."""

    name: str
    id: str
    report_path: Path | None

    @property
    def outcomes(self) -> list[Outcome]: ...

    def refresh(self) -> list[Outcome]: ...

    def cancel(self, grace: float | None = None) -> list[Outcome]: ...

    def report(self, path: str | os.PathLike[str]) -> Path: ...


def stop_run(run: Stoppable, reason: BaseException) -> NoReturn:
    """Stop ``run`` after Ctrl-C or SIGTERM (``reason``), saying what happens.

    Prints one line at once (what is dropped, what is interrupted), cancels
    (a second Ctrl-C kills at once), prints the table of every outcome and
    writes the report the run was asked for; then raises
    :class:`RunInterrupted`, which ends a testscript with 130 (143 for
    SIGTERM) and no traceback.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    what = "SIGTERM" if isinstance(reason, Terminated) else "Ctrl-C"
    try:
        try:
            run.refresh()
        except LabqError:
            pass  # Redis away: cancel below says so
        pending = [o for o in run.outcomes if not o.status.final]
        running = sum(o.status is Status.RUNNING for o in pending)
        hint = " (Ctrl-C again to kill now)" if running else ""
        console.print(f"{what}: cancelling run {run.name} ({run.id}): "
                      f"{len(pending) - running} queued dropped, {running} running "
                      f"interrupted{hint}")
        try:
            run.cancel()
        except KeyboardInterrupt:
            console.print(f"killing the {running} running tasks of {run.id} now")
            run.cancel(grace=0)
    except LabqError as exc:
        console.print(f"labq: error: run {run.id} not cancelled: {exc}")
    except KeyboardInterrupt:
        pass  # a third Ctrl-C: the table and the exit still follow
    Console(highlight=False).print(outcome_table(run.outcomes, f"{run.name}: cancelled by {what}"))
    if run.report_path is not None:
        try:
            console.print(f"report: {run.report(run.report_path)}")
        except (LabqError, OSError) as exc:
            console.print(f"labq: error: report {run.report_path} not written: {exc}")
    raise RunInterrupted(exit_status(reason), run.outcomes) from None
