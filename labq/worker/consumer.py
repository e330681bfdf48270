"""The worker's consumer: Celery's, sending its buffered task events in batches.

Celery's worker buffers task events (``task-received``, ``-started``,
``-succeeded`` ...) and publishes the buffer as one ``task.multi`` message on
the next turn of its event loop. Under load that is one synchronous
``PUBLISH`` per event, made by the main process that also dispatches tasks
to the pool: about a third of its time on a CPU-bound 2-core host, and a
Redis round trip between receiving a task and handing it to a child.

:class:`LabqConsumer` publishes the buffer at most every
:data:`EVENT_FLUSH_INTERVAL` seconds instead. Each event keeps its own
timestamp and order, so Flower shows the same times, up to that much later;
a full buffer (Celery's 24 events) still goes out at once.
"""

from __future__ import annotations

import logging
import time

from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)

#: Longest a buffered task event waits before it is published.
EVENT_FLUSH_INTERVAL = 0.05


class LabqConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer with task events published every EVENT_FLUSH_INTERVAL."""

    #: When the pending flush is due (0.0: none pending).
    _labq_flush_due = 0.0

    def on_send_event_buffered(self) -> None:
        if not self.hub:
            return
        now = time.monotonic()
        # A flush timer lost with a connection restart must not block the next.
        if self._labq_flush_due and now < self._labq_flush_due + 1.0:
            return
        self._labq_flush_due = now + EVENT_FLUSH_INTERVAL
        self.hub.call_later(EVENT_FLUSH_INTERVAL, self._labq_flush)

    def _labq_flush(self) -> None:
        self._labq_flush_due = 0.0
        self._flush_events()

    def shutdown(self) -> None:
        try:
            self._flush_events()  # what the loop will not send any more
        except Exception as exc:
            log.warning("task events not sent at shutdown: %s", exc)
        super().shutdown()
