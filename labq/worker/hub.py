"""The worker's event loop: kombu's ``Hub`` without system calls for nothing.

On every turn of its loop, Celery's prefork pool asks the hub to stop
watching each idle child's pipe for writing, watched or not
(``AsynPool`` ``on_poll_start``). kombu's ``Hub.remove_writer`` answers every
one with an ``epoll_ctl(EPOLL_CTL_DEL)`` that fails with ``ENOENT``: about 20
system calls per task on a 16-slot worker (``strace -c`` of a worker's main
process during a 200-task fan-out). :class:`LabqHub` skips the removal of a
writer it does not watch; everything else is kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.asynchronous import Hub
from kombu.utils.compat import fileno


class LabqHub(Hub):  # type: ignore[misc]
    """kombu's Hub; removing a writer it does not watch is a no-op."""

    def remove_writer(self, fd: Any) -> None:
        try:
            watched = fileno(fd) in self.writers  # type: ignore[no-untyped-call]
        except Exception:  # a closed file: let kombu clean up after it
            watched = True
        if watched:
            super().remove_writer(fd)  # type: ignore[no-untyped-call]
