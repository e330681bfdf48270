"""Diagnostic tasks for tests, benchmarks and checking a lab end to end."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from labq import device_task
from labq.devices.drivers import Session

log = logging.getLogger(__name__)


def _where() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "nice": os.nice(0)}


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


@shared_task(name="tasks.diag.nap", idempotent=True)
def nap(seconds: float = 1.0, pidfile: str | None = None) -> dict[str, Any]:
    """:func:`sleep` marked idempotent: it may run again after its worker died."""
    _record(pidfile, "start", os.getpid())
    time.sleep(seconds)
    _record(pidfile, "end", os.getpid())
    return {"slept": seconds, **_where()}


@shared_task(name="tasks.diag.tally", bind=True, idempotent=True)
def tally(self: Any, seconds: float = 0.1, path: str | None = None) -> dict[str, Any]:
    """Sleep ``seconds``, then append the task id to the file ``path``: one
    line per completed run, so a test sees a task that ran twice."""
    time.sleep(seconds)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{self.request.id}\n")
    return {"slept": seconds, **_where()}


@shared_task(name="tasks.diag.burn")
def burn(seconds: float = 1.0) -> dict[str, Any]:
    """Keep one core busy for ``seconds``, counting loop turns."""
    end = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < end:
        turns += 1
    return {"turns": turns, **_where()}


def sleep_through_soft_limits(seconds: float) -> int:
    """Sleep ``seconds``, swallowing every soft interrupt; how many came."""
    end = time.monotonic() + seconds
    interrupted = 0
    while True:
        # The loop's test is inside the try too: an interrupt can land on any
        # line, not only in the sleep.
        try:
            if time.monotonic() >= end:
                break
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        except SoftTimeLimitExceeded:
            interrupted += 1
            log.warning("ignoring the soft time limit (%d)", interrupted)
    return interrupted


@shared_task(name="tasks.diag.stubborn")
def stubborn(seconds: float = 3600.0) -> dict[str, Any]:
    """Swallow ``SoftTimeLimitExceeded`` and keep sleeping.

    Only the hard limit stops this task, which is what it is for.
    """
    return {"interrupted": sleep_through_soft_limits(seconds), **_where()}


@shared_task(name="tasks.diag.masked")
def masked(seconds: float = 3600.0) -> dict[str, Any]:
    """Sleep; turn the soft interrupt into a ``KeyError``, as paramiko does
    when it is interrupted while it connects."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        raise KeyError("<paramiko.Transport (unconnected)>") from None
    return _where()


@shared_task(name="tasks.diag.fail")
def fail(message: str = "diag failure") -> None:
    """Raise ``RuntimeError(message)``, to exercise failure reporting."""
    raise RuntimeError(message)


# -- tasks that start processes, for the killability tests ----------------------
#
# Each appends ``task <pid>`` and ``child <pid>`` lines to ``pidfile`` so a
# test can check the process table after a kill. With ``obey_soft`` false the
# soft limit's signal is ignored, so only the hard limit (or a SIGKILL
# revoke) stops the task, the case labq.worker.killing exists for.

#: A process that outlives SIGTERM: only SIGKILL (or the group's) ends it.
_IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 "time.sleep({seconds})")


def _record(pidfile: str | None, role: str, pid: int, *extra: str) -> None:
    # One small O_APPEND write per line: processes writing at once don't interleave.
    if not pidfile:
        return
    fd = os.open(pidfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, " ".join([role, str(pid), *extra]).encode() + b"\n")
    finally:
        os.close(fd)


class _SoftLimit:
    """Ignore the soft limit's signal (billiard's SIGUSR1) unless ``obey``."""

    def __init__(self, obey: bool) -> None:
        self.obey = obey
        self.old: Any = None

    def __enter__(self) -> None:
        import signal

        if not self.obey:
            self.old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        import signal

        if not self.obey:
            signal.signal(signal.SIGUSR1, self.old)


@shared_task(name="tasks.diag.spawn_sleepers")
def spawn_sleepers(n: int = 2, seconds: float = 3600.0, pidfile: str | None = None,
                   new_session: bool = False, obey_soft: bool = False) -> dict[str, Any]:
    """Start ``n`` subprocesses that ignore SIGTERM and sleep ``seconds``; wait for them.

    ``new_session`` puts them in their own session (as pexpect does for
    unicon's ssh), out of the child's process group.
    """
    import subprocess
    import sys

    with _SoftLimit(obey_soft):
        _record(pidfile, "task", os.getpid())
        procs = [subprocess.Popen([sys.executable, "-c", _IGNORES_TERM.format(seconds=seconds)],
                                  stdin=subprocess.DEVNULL, start_new_session=new_session)
                 for _ in range(n)]
        try:
            for proc in procs:
                _record(pidfile, "child", proc.pid)
            log.info("started %d sleepers: %s", n, [p.pid for p in procs])
            codes = [proc.wait() for proc in procs]
        finally:
            for proc in procs:  # a soft interrupt: don't leave them behind
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return {"pids": [p.pid for p in procs], "codes": codes, **_where()}


def _square_after(i: int, seconds: float, pidfile: str | None, role: str) -> tuple[int, int]:
    """One item of a pool or pcall: sleep, then ``(i * i, pid)``."""
    if role:
        _record(pidfile, role, os.getpid())
    time.sleep(seconds)
    return i * i, os.getpid()


@shared_task(name="tasks.diag.pool_children")
def pool_children(n: int = 4, seconds: float = 3600.0, pidfile: str | None = None,
                  obey_soft: bool = False) -> dict[str, Any]:
    """Map ``n`` items over a ``multiprocessing.Pool(n)``, each sleeping ``seconds``."""
    import multiprocessing

    with _SoftLimit(obey_soft):
        _record(pidfile, "task", os.getpid())
        with multiprocessing.Pool(n) as pool:
            workers = [p.pid for p in multiprocessing.active_children() if p.pid]
            for pid in workers:
                _record(pidfile, "child", pid)
            out = pool.starmap(_square_after, [(i, seconds, None, "") for i in range(n)],
                               chunksize=1)
    return {"results": [r for r, _ in out], "item_pids": [p for _, p in out],
            "pids": workers, **_where()}


def _signal_actions(_: int) -> dict[str, str]:
    import signal

    def name(action: Any) -> str:  # "SIG_DFL", "SIG_IGN" or the handler's name
        return str(getattr(action, "name", None) or getattr(action, "__name__", repr(action)))

    return {sig: name(signal.getsignal(getattr(signal, sig)))
            for sig in ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1")}


@shared_task(name="tasks.diag.child_signals")
def child_signals() -> dict[str, Any]:
    """The signal actions a ``multiprocessing`` child of the task starts with."""
    import multiprocessing

    with multiprocessing.Pool(1) as pool:
        return {"child": pool.map(_signal_actions, [0])[0], **_where()}


@shared_task(name="tasks.diag.pcall_children")
def pcall_children(n: int = 4, seconds: float = 3600.0, pidfile: str | None = None,
                   obey_soft: bool = False) -> dict[str, Any]:
    """Run ``n`` items through pyATS's pcall (one forked child each), each sleeping ``seconds``."""
    from pyats.async_ import pcall

    with _SoftLimit(obey_soft):
        _record(pidfile, "task", os.getpid())
        out = pcall(_square_after, ckwargs={"seconds": seconds, "pidfile": pidfile,
                                             "role": "child"},
                    ikwargs=[{"i": i} for i in range(n)])
    return {"results": [r for r, _ in out], "pids": [p for _, p in out], **_where()}


@device_task(name="tasks.diag.hold_device")
def hold_device(session: Session, seconds: float = 3600.0) -> dict[str, Any]:
    """Open a device session and keep it, ignoring the soft limit: only the
    hard limit ends it, which is what it is for (the lease and the session
    must still be freed at once)."""
    session.execute("show version")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            log.warning("%s: ignoring the soft time limit", session.device.name)
    return _where()


@device_task(name="tasks.diag.fail_device")
def fail_device(session: Session, message: str = "diag device failure") -> None:
    """Run ``show version`` on the device, then raise ``RuntimeError(message)``:
    a device task that fails with its device leased (``hold_on_failure``)."""
    session.execute("show version")
    raise RuntimeError(message)


@device_task(name="tasks.diag.tick_device", idempotent=True)
def tick_device(session: Session, seconds: float = 5.0, tickfile: str = "") -> dict[str, Any]:
    """Hold a device session ``seconds``, appending ``tick <pid> <time>`` to
    ``tickfile`` every 0.1 s: idempotent, so it may run again after its host
    died, and the ticks show that two runs of it never overlapped."""
    session.execute("show version")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _record(tickfile, "tick", os.getpid(), f"{time.time():.3f}")
        time.sleep(0.1)
    return _where()


# -- probes for bench/timelimits ------------------------------------------------


@shared_task(name="tasks.diag.soft_probe", bind=True)
def soft_probe(self: Any, timefile: str, seconds: float = 60.0) -> dict[str, Any]:
    """Sleep ``seconds`` and record when the body started and when it caught
    ``SoftTimeLimitExceeded``, as one JSON line in ``timefile``; then re-raise,
    so the outcome is ``soft_timeout``.

    Times are ``time.time()`` in this prefork child, comparable with the
    clock of any process on the same host.
    """
    import json

    t_start = time.time()
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        t_caught = time.time()
        line = json.dumps({"task_id": self.request.id, "pid": os.getpid(),
                           "t_start": t_start, "t_caught": t_caught})
        fd = os.open(timefile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        raise
    return {"t_start": t_start, "t_caught": None, **_where()}
