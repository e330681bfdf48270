"""The two Redis streams a run's client reads while it waits.

Each task of a run adds its id to the run's done stream
(``labq:run:<id>:done``) once its result is stored, and its log lines to the
run's log stream (``labq:run:<id>:log``). :class:`RunStreams` keeps the
cursors of both and reads them together, so a waiting client wakes within a
round trip of a task's end or log line instead of polling.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from labq.client.progress import Progress
from labq.keys import done_key, log_key

POLL_INTERVAL = 0.1
#: Entries one XREAD of the done and log streams returns at most.
XREAD_COUNT = 1000


class RunStreams:
    """Reader of one run's done and log streams; log lines go to a :class:`Progress`."""

    def __init__(self, client: redis.Redis, run_id: str, logs: bool) -> None:
        self.redis = client
        self.logs = logs
        self._done_key = done_key(run_id)
        self._log_key = log_key(run_id)
        self._log_cursor = "0-0"
        self._done_cursor = "0-0"
        self._woke = 0.0
        self._announced: set[str] = set()
        #: Whether the last wake left log lines behind.
        self._log_backlog = False

    @property
    def log_backlog(self) -> bool:
        """Whether the last wake read as many log lines as one XREAD returns
        (more may be waiting)."""
        return self._log_backlog

    @property
    def announced(self) -> set[str]:
        """Task ids the done stream named since the last ``clear_announced``:
        their results are stored, so only those need reading."""
        return self._announced

    def clear_announced(self) -> None:
        """Forget the announced ids, once their results were read."""
        self._announced.clear()

    def wait(self, bar: Progress, timeout: float, pending_count: int) -> None:
        """Block until a task of the run ends or logs, at most ``timeout`` s.

        Each task's id is added to the run's done stream with its stored
        result (labq's result backend does both in one script); one ``XREAD``
        waits on that stream and the log stream together, so the loop wakes
        within a round trip of a result instead of polling. Log lines read
        here are shown.

        A wake reads only the results the stream named (``announced``), but
        with many pending the wakes are still spaced by 100 us per pending
        task (``pending_count``, at most 0.2 s): a large run reads once per
        batch of ends, not once per end, and a single task still wakes at once.
        """
        gap = min(0.2, 100e-6 * pending_count) - (time.monotonic() - self._woke)
        if gap > 0:
            time.sleep(gap)
        streams: dict[Any, Any] = {self._done_key: self._done_cursor}
        if self.logs:
            streams[self._log_key] = self._log_cursor
        try:
            reply: Any = self.redis.xread(streams, count=XREAD_COUNT,
                                          block=max(1, int(timeout * 1000)))
        except redis.RedisError:
            time.sleep(POLL_INTERVAL)
            return
        self._woke = time.monotonic()
        self._log_backlog = False
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            if name == self._log_key and len(entries) >= XREAD_COUNT:
                self._log_backlog = True  # more lines than one read returns
            for entry_id, fields in entries:
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if name != self._log_key:
                    self._done_cursor = cursor
                    task_id = fields.get(b"task_id")
                    if task_id:
                        self._announced.add(task_id.decode())
                    continue
                self._show_log(bar, entry_id, fields)

    def drain_logs(self, bar: Progress) -> None:
        """Show the log lines written after the last wake, without waiting."""
        if not self.logs:
            return
        try:
            reply: Any = self.redis.xread({self._log_key: self._log_cursor}, count=500)
        except redis.RedisError:
            return
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._show_log(bar, entry_id, fields)

    def _show_log(self, bar: Progress, entry_id: Any, fields: dict[bytes, bytes]) -> None:
        self._log_cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        f = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
        bar.log(f.get("device") or f.get("task_id", "")[:8], f.get("level", ""),
                f.get("message", ""))
