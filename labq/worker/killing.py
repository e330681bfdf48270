"""A hard kill takes the prefork child and every process it started.

billiard's hard time limit signals only the child's PID, so processes the
task started (``subprocess``, ``multiprocessing``, pyATS pcall, unicon's ssh)
outlive it as orphans (billiard #204). labq closes that hole in two places:

- In each prefork child, at ``worker_process_init`` (:func:`init_child`):
  the child becomes the leader of its own process group, so everything it
  forks shares a group whose id is the child's PID; and it stops calling
  itself daemonic, so ``multiprocessing`` and pcall may start processes in
  a task (celery#1709). Processes forked from the child get back the
  default action for the signals billiard catches (:func:`plain_signals`).
- In the worker's main process, :class:`KillingRequest` (the ``Request`` of
  every labq task) SIGKILLs the group, plus any descendant that left it
  (pexpect, as unicon uses, calls ``setsid``), when the hard limit fires or
  a revoke terminates with SIGKILL. When the child died any other way, it
  sweeps what is left of the group. A revoke with SIGUSR1 (the cancel's
  interrupt) only signals the child and leaves the task active, so the
  SIGKILL revoke that follows a grace period still finds it.
- Before a hard-limit kill the main process takes the child's stacks
  (:mod:`labq.worker.child_stacks`), which become the stored error's traceback.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from typing import Any

import psutil
from billiard.exceptions import Terminated, WorkerLostError
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown
from celery.worker.request import Request

from labq.worker import child_stacks
from labq.worker.interrupt import SOFT_SIGNAL

log = logging.getLogger(__name__)

#: Signals a revoke may terminate with that end the child; their senders
#: expect the task's processes to go with it. SIGUSR1 (the soft interrupt)
#: is not one: it must reach the child alone.
FATAL_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                           signal.SIGABRT})


# -- in the prefork child ----------------------------------------------------

def init_child(**_: Any) -> None:
    """Make this prefork child a group leader that may have children, at a
    lower priority than its worker's main process."""
    try:
        # Our own group: one killpg reaches all we fork, and nothing else.
        os.setpgid(0, 0)
    except OSError as exc:  # the main process then kills the tree through psutil
        log.warning("prefork child %d could not lead its own process group: %s",
                    os.getpid(), exc)
    # billiard's current process is also multiprocessing's; without this,
    # Process.start() refuses: "daemonic processes are not allowed to have
    # children". Only the child's own view changes; the pool still treats it
    # as a daemon.
    from billiard.process import current_process as billiard_current

    procs: tuple[Any, ...] = (billiard_current(), multiprocessing.current_process())
    for proc in procs:
        try:
            proc._config["daemon"] = False
        except Exception as exc:  # a signal handler must not stop the child
            log.warning("prefork child %d stays daemonic (%s): tasks cannot fork "
                        "multiprocessing children", os.getpid(), exc)
    # Registered here, in the child, so that only the forks a task makes run it.
    os.register_at_fork(after_in_child=_plain_signals_in_fork)
    lower_priority()
    child_stacks.arm()


#: Set by :func:`install` in the worker's main process, before the pool forks.
_child_nice = 0


def lower_priority() -> None:
    """Renice this prefork child by ``child_nice`` (labq.settings).

    On a busy host the main process must not wait behind its own children:
    it hands out the next task, acks, enforces hard limits and writes the
    heartbeat that keeps the worker from being declared dead.
    """
    if _child_nice:
        try:
            os.nice(_child_nice)
        except OSError as exc:
            log.warning("prefork child %d keeps its priority: %s", os.getpid(), exc)


def plain_signals() -> list[int]:
    """Give back the default action for every signal billiard's child catches.

    Runs in each process forked from a prefork child. billiard's SIGTERM
    handler raises ``SystemExit`` from Python code, and CPython only runs it
    between bytecodes: a ``multiprocessing`` worker that gets SIGTERM just as
    it starts waiting on its queue's lock never wakes. ``Pool.__exit__``
    (which terminates with SIGTERM) then waited forever on one worker in
    about one pool of sixty. With the default action the kernel ends it.
    """
    from billiard.common import _shutdown_cleanup

    reset = []
    for sig in signal.valid_signals():
        try:
            if signal.getsignal(sig) is _shutdown_cleanup:
                signal.signal(sig, signal.SIG_DFL)
                reset.append(int(sig))
        except (OSError, ValueError, RuntimeError):
            continue
    return reset


def _plain_signals_in_fork() -> None:
    try:
        plain_signals()
    except Exception as exc:  # a fork hook must never stop the new process
        log.warning("process %d keeps billiard's signal handlers: %s", os.getpid(), exc)


def install(child_nice: int = 0) -> None:
    """Run :func:`init_child` in every prefork child; idempotent.

    Connected in the worker's main process before the pool forks, so every
    child (and every replacement child) inherits the receiver and the
    niceness to add.
    """
    global _child_nice
    _child_nice = child_nice
    worker_process_init.connect(init_child, dispatch_uid="labq.worker.killing.init_child", weak=False)
    worker_process_shutdown.connect(child_stacks.disarm, dispatch_uid="labq.worker.child_stacks.disarm",
                                    weak=False)


# -- in the worker's main process --------------------------------------------

def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _sigkill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()  # psutil refuses a PID that was reused since the snapshot
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def kill_child_tree(pid: int | None) -> list[int]:
    """SIGKILL the prefork child ``pid``, its process group and its descendants.

    Returns the PIDs of the descendants found. The snapshot comes first:
    once the child is dead, those that left the group are reparented and no
    longer found through it.
    """
    if not pid or pid == os.getpid():
        return []
    victims = _descendants(pid)
    if _leads_group(pid):
        # Never our own group: a child that is not a leader is skipped here.
        _killpg(pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    _sigkill(victims)
    return [p.pid for p in victims]


def sweep_group(pid: int | None, extra: list[psutil.Process] | None = None) -> None:
    """SIGKILL what is left of dead child ``pid``'s group (and ``extra``).

    While a group has members the kernel does not hand its id out as a new
    PID, so a living process with PID ``pid`` means a reused number and an
    empty group: it is left alone.
    """
    if extra:
        _sigkill(extra)
    if not pid or pid == os.getpid():
        return
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return
    except psutil.NoSuchProcess:
        pass
    if _killpg(pid):
        log.warning("killed what child %s left behind in its process group", pid)


def pool_children() -> list[psutil.Process]:
    """The worker main process's children with all their descendants, now."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def sweep_after_shutdown(before: list[psutil.Process]) -> None:
    """After the pool stopped: SIGKILL anything of the children's trees that is
    still alive (grandchildren in a child's group, or that left it)."""
    for proc in before:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                log.warning("worker shutdown: killing leftover process %s", proc.pid)
                proc.kill()
        except psutil.Error:
            continue
        sweep_group(proc.pid)


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except OSError:
        return False


def _killpg(pgid: int) -> bool:
    """SIGKILL group ``pgid``; true when it had a member to signal."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        return False
    return True


_SIGKILL = signal.SIGKILL


class KillingRequest(Request):  # type: ignore[misc]
    """The main process's view of a labq task: its kills take the whole tree.

    Set as ``Request`` on :class:`labq.worker.task_base.LabqTask`; subclasses (such
    as :class:`labq.worker.device_task.DeviceRequest`) call ``super()`` first.
    """

    _labq_killed: bool = False
    _labq_doomed: list[psutil.Process] | None = None

    def kill_tree(self, why: str, stack: bool = False) -> None:
        """SIGKILL the task's child and every process it started, once; with
        ``stack``, take the child's stacks first for the stored traceback."""
        if self._labq_killed or not self.worker_pid:
            return
        self._labq_killed = True
        stacks = child_stacks.take(self.worker_pid) if stack else ""
        if stacks:
            # Both of Celery's stores of the hard limit (on_failure, then
            # on_timeout) pass this context: labq's backend stores the
            # stacks as the error's traceback (labq.worker.backend).
            self._context.labq_stack = stacks
        found = kill_child_tree(self.worker_pid)
        child_stacks.discard(self.worker_pid)
        log.warning("%s: killed task %s in child %s with its processes %s%s",
                    why, self.id, self.worker_pid, found,
                    f"; it was at:\n{stacks}" if stacks else "")
        self.on_killed()

    def on_killed(self) -> None:
        """Called once the task's processes are dead or dying; subclasses free
        what the task held (device leases). Must not raise."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # unwrap ExceptionWithTraceback
        if isinstance(exc, TimeLimitExceeded):
            # billiard reports the hard limit here before on_timeout and before
            # it signals the child: kill first, so no outcome precedes the kill.
            self.kill_tree("hard time limit", stack=True)
        elif isinstance(exc, (Terminated, WorkerLostError)):
            # The child is gone (a revoke, OOM, a crash): leave no orphan behind.
            sweep_group(self.worker_pid, self._labq_doomed)
            if not self._labq_killed:
                self._labq_killed = True
                self.on_killed()
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _announce_cancelled(self, emit_retry: bool = True) -> None:
        # Celery cancels running late-ack tasks when the worker loses Redis
        # and stores RETRY, so the message, redelivered after the visibility
        # timeout, runs the task again. labq ends the task as cancelled
        # instead: its run fences it (labq.client.cancel.fence_stopped), nothing runs twice,
        # and nobody waits an hour for the redelivery.
        if emit_retry:
            try:
                self.task.backend.mark_as_revoked(
                    self.id, "cancelled: the worker lost its connection to Redis",
                    request=self._context, store_result=self.store_errors)
            except Exception as exc:  # the run's liveness check still settles it
                log.warning("task %s cancelled on a lost connection; its end was not "
                            "stored: %s", self.id, exc)
        super()._announce_cancelled(emit_retry=False)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self.kill_tree("hard time limit", stack=True)
        super().on_timeout(soft, timeout)

    def terminate(self, pool: Any, signal: Any = None) -> None:
        from celery.platforms import signals

        signum = signals.signum(signal or "SIGTERM")
        if self.time_start and self.worker_pid:
            if signum == SOFT_SIGNAL:
                # An interrupt, not an end: Celery would mark the task revoked
                # and forget it, so a later SIGKILL revoke (Run.cancel's grace
                # escalation) found nothing. Signal the child only; the task
                # reports its own end, or stays active for the kill.
                try:
                    os.kill(self.worker_pid, signum)
                except OSError:
                    pass
                return
            if signum == _SIGKILL:  # the parameter's name hides the signal module
                self.kill_tree("revoke with SIGKILL")
            elif signum in FATAL_SIGNALS:
                # The child dies on its own; remember its escaped descendants now,
                # while they are still its descendants, for the sweep in on_failure.
                self._labq_doomed = [p for p in _descendants(self.worker_pid)
                                     if not _in_group(p, self.worker_pid)]
        super().terminate(pool, signal)
