"""Keeping a lease: one thread per process renews every lease its tasks hold."""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType

from labq.devices.lease import Grant, Leases

log = logging.getLogger(__name__)


class Renewer:
    """Renew ``grant`` every ttl/3 until the block exits.

    Every Renewer of a process is served by one daemon thread
    (:class:`_RenewalThread`), started on first use: a task does not pay
    for starting and joining a thread of its own. The thread dies with its
    process, so a killed holder stops renewing and its lease expires by TTL.
    When a renewal finds the lease gone, ``lost`` is set and a warning
    logged; renewals never raise.
    """

    def __init__(self, leases: Leases, grant: Grant, *, ttl: float | None = None) -> None:
        self.leases = leases
        self.grant = grant
        self.ttl = leases.ttl if ttl is None else ttl
        self.lost = False
        self._active = False

    def __enter__(self) -> Renewer:
        self._active = True
        _RenewalThread.get().add(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._active = False  # a renewal still in flight now goes unreported
        _RenewalThread.get().remove(self)

    def renew(self) -> bool:
        """Renew once; False once the lease is known lost (then stop renewing)."""
        g = self.grant
        try:
            alive = self.leases.renew(g.device, g.holder, ttl=self.ttl)
        except Exception as exc:  # transient: the lease may still be alive, retry
            log.warning("lease on %s for %s: renewal failed: %s", g.device, g.holder, exc)
            return True
        if not alive and self._active:
            self.lost = True
            log.warning("lease on %s for %s was lost (expired or released)", g.device, g.holder)
        return alive


class _RenewalThread:
    """The one thread of a process that renews its leases, each every ttl/3."""

    _instance: tuple[int, _RenewalThread] | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> _RenewalThread:
        with cls._lock:  # a forked child starts its own thread
            if cls._instance is None or cls._instance[0] != os.getpid():
                cls._instance = (os.getpid(), cls())
            return cls._instance[1]

    def __init__(self) -> None:
        self._due: dict[Renewer, float] = {}
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lease-renewer")
        self._thread.start()

    def add(self, renewer: Renewer) -> None:
        with self._wake:
            at = time.monotonic() + renewer.ttl / 3
            # The thread sleeps until the earliest renewal: wake it only when
            # this one comes sooner (every task of a process would otherwise).
            if not self._due or at < min(self._due.values()):
                self._wake.notify()
            self._due[renewer] = at

    def remove(self, renewer: Renewer) -> None:
        with self._wake:
            self._due.pop(renewer, None)

    def _loop(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [r for r, at in self._due.items() if at <= now]
                if not due:
                    self._wake.wait(min(self._due.values(), default=now + 60) - now)
                    continue
                for r in due:
                    self._due[r] = now + r.ttl / 3
            for r in due:  # outside the lock: a slow Redis must not block add/remove
                if not r.renew():
                    self.remove(r)
