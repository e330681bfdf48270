"""Where a hard-killed task was stuck: its child's stacks, taken just before the kill.

A task reaches its hard limit because it did not end at the soft one: it
sat in a lock, a system call or a C extension, where a Python signal
handler never runs. :mod:`faulthandler`'s handler is C code and runs there
too. Each prefork child registers it (:func:`arm`) to write every thread's
stack to a file of its own; the worker's main process signals the child,
reads the file (:func:`take`) and only then kills it
(:class:`labq.worker.killing.KillingRequest`). The stack goes to the worker's log
and into the task's stored error.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: Unused by billiard and Celery in a prefork child.
DUMP_SIGNAL = signal.SIGUSR2
#: Longest wait, in the main process, for a child to write its stacks.
TAKE_WAIT = 0.25

_file: IO[str] | None = None


def dump_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"labq-stacks-{os.getuid()}"


def dump_path(pid: int) -> Path:
    return dump_dir() / f"{pid}.txt"


def arm(**_: Any) -> None:
    """In a prefork child: write every thread's stack to this child's file on
    :data:`DUMP_SIGNAL`."""
    global _file
    try:
        dump_dir().mkdir(mode=0o700, exist_ok=True)
        # Append mode: after the main process empties the file, the next
        # dump starts at its beginning again.
        _file = open(dump_path(os.getpid()), "a", encoding="utf-8")  # noqa: SIM115
        faulthandler.register(DUMP_SIGNAL, file=_file, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError) as exc:  # a kill then comes without a stack
        log.warning("prefork child %d cannot dump its stacks: %s", os.getpid(), exc)


def disarm(**_: Any) -> None:
    """In a prefork child that exits: remove its file."""
    try:
        dump_path(os.getpid()).unlink(missing_ok=True)
    except OSError:
        pass


def take(pid: int, wait: float = TAKE_WAIT) -> str:
    """In the main process: the stacks of child ``pid``, or "" when it has no
    file or did not write within ``wait`` seconds. Empties the file."""
    path = dump_path(pid)
    if not path.exists():
        return ""
    try:
        os.kill(pid, DUMP_SIGNAL)
    except OSError:
        return ""
    deadline = time.monotonic() + wait
    size, settled = 0, 0
    while time.monotonic() < deadline and settled < 2:
        time.sleep(0.002)
        try:
            now = path.stat().st_size
        except OSError:
            return ""
        # Written and no longer growing for two polls: the dump is whole.
        settled = settled + 1 if now and now == size else 0
        size = now
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        os.truncate(path, 0)
    except OSError:
        return ""
    return trim(text)


#: Frames from here outwards are the pool's machinery, the same in every dump.
_MACHINERY = ("/celery/app/trace.py", "/billiard/")
#: Most frames kept per thread.
MAX_FRAMES = 25


def trim(text: str) -> str:
    """faulthandler's dump without the pool's frames around each thread's work."""
    out: list[str] = []
    frames = 0
    skipping = False
    for line in text.strip().splitlines():
        if not line.startswith("  "):  # a thread's header, or the blank line between
            skipping, frames = False, 0
            out.append(line)
        elif not skipping:
            skipping = any(part in line for part in _MACHINERY) or frames >= MAX_FRAMES
            if not skipping:
                out.append(line)
                frames += 1
    return "\n".join(out).strip()


def discard(pid: int) -> None:
    """In the main process: remove the file of child ``pid``, which is gone."""
    try:
        dump_path(pid).unlink(missing_ok=True)
    except OSError:
        pass
