"""Start service processes in their own session, and stop whole process trees.

Every process the embedded stack starts leads its own process group, so one
``killpg`` reaches its children. Descendants that left the group (a prefork
child made a group leader, a daemonised helper) are found through psutil
before the first signal and killed too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a process-group leader, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its living descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(proc: subprocess.Popen[bytes], timeout: float = 10.0,
              sig: int = signal.SIGTERM) -> None:
    """Stop one process tree; see :func:`stop_trees`."""
    stop_trees([proc], timeout, sig)


def stop_trees(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 10.0,
               sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to each process's group, wait up to ``timeout`` for them to
    exit, then SIGKILL every process left in their trees."""
    members: list[psutil.Process] = []
    for proc in procs:
        members += tree(proc.pid)
        _killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for proc in procs:
        members += [p for p in tree(proc.pid) if p not in members]
        _killpg(proc.pid, signal.SIGKILL)
    for member in members:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(members, timeout=5)
    for proc in procs:
        if proc.poll() is None:
            proc.wait(timeout=5)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
