"""Progress of a run: a rich bar on a TTY, plain periodic lines otherwise.

Log lines from the tasks are printed above the bar, prefixed with the device.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from labq.outcome import Outcome, Status

#: Seconds between plain progress lines when there is no TTY.
PLAIN_EVERY = 5.0


class Progress:
    """Counts finished tasks and failures; ``enabled=None`` means "on a TTY"."""

    def __init__(self, run_id: str, total: int, enabled: bool | None = None,
                 console: Console | None = None) -> None:
        self.run_id = run_id
        self.total = total
        self.done = 0
        self.failed = 0
        self.console = console or Console(stderr=True)
        tty = sys.stderr.isatty()
        self.enabled = tty if enabled is None else enabled
        self.fancy = self.enabled and tty
        self._last_plain = 0.0
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Progress:
        if self.fancy:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.run_id, total=self.total, failed=0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and exc_type is None:
            self._plain(force=True)

    def advance(self, outcomes: Iterable[Outcome]) -> None:
        for o in outcomes:
            self.done += 1
            if o.status is not Status.SUCCEEDED:
                self.failed += 1
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, failed=self.failed)
        elif self.enabled:
            self._plain()

    def _plain(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_plain >= PLAIN_EVERY:
            self._last_plain = now
            self.console.print(f"{self.run_id}: {self.done}/{self.total} done, "
                               f"{self.failed} not succeeded", highlight=False)

    def log(self, device: str, level: str, message: str) -> None:
        style = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}.get(level, "cyan")
        self.console.print(f"[{style}]\\[{escape(device)}][/] {escape(message)}", highlight=False)

    def note(self, message: str) -> None:
        self.console.print(escape(message), highlight=False)
