"""labq.worker.child_stacks: a stuck process's stacks, taken from outside, trimmed to the task."""

from __future__ import annotations

import multiprocessing
import threading
import time

from labq.worker import child_stacks


def _stuck_in_a_lock(ready: multiprocessing.synchronize.Event) -> None:
    child_stacks.arm()
    lock = threading.Lock()
    lock.acquire()
    ready.set()
    lock.acquire()  # never returns: where a Python signal handler never runs


def test_take_gets_the_stacks_of_a_process_stuck_in_a_lock() -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_stuck_in_a_lock, args=(ready,), daemon=True)
    proc.start()
    try:
        assert ready.wait(10)
        assert proc.pid is not None
        text = child_stacks.take(proc.pid, wait=2.0)
        assert "most recent call first" in text and "in _stuck_in_a_lock" in text, text
        # The file is emptied for the next dump, and gone once discarded.
        assert child_stacks.dump_path(proc.pid).stat().st_size == 0
    finally:
        proc.kill()
        proc.join(5)
        assert proc.pid is not None
        child_stacks.discard(proc.pid)
    assert not child_stacks.dump_path(proc.pid).exists()


def test_take_of_a_process_without_a_file_is_empty() -> None:
    start = time.monotonic()
    assert child_stacks.take(2**22 + 12345) == ""
    assert time.monotonic() - start < child_stacks.TAKE_WAIT


def test_trim_drops_the_pool_frames_around_each_thread() -> None:
    kept = [
        "Thread 0x1 (most recent call first):",
        '  File "/x/paramiko/transport.py", line 10 in run',
        '  File "/usr/lib/python3.11/threading.py", line 1045 in _bootstrap_inner',
        "",
        "Current thread 0x2 (most recent call first):",
        '  File "/lab/tasks/device.py", line 24 in execute',
    ]
    pool = [
        '  File "/v/celery/app/trace.py", line 564 in trace_task',
        '  File "/v/billiard/pool.py", line 369 in workloop',
        '  File "/v/click/core.py", line 1414 in invoke',
    ]
    assert child_stacks.trim("\n".join(kept + pool)).splitlines() == kept
