"""The result backend: Celery's Redis backend, one round trip per state change.

Celery's ``RedisBackend`` stores a state in two round trips: a ``GET`` (so a
late duplicate never overwrites ``SUCCESS``), then ``MULTI SETEX PUBLISH
EXEC``. A labq task changes state twice (``STARTED``, then its result), and
labq used to announce the end to its run in a third command
(``XADD labq:run:<id>:done``). :class:`LabqRedisBackend` does each change in
one script instead, with the same check, the same key, value, expiry and
channel, so plain Celery clients (``AsyncResult.get()``, Flower) see no
difference.

Because the announcement now rides with the stored result, an end stored by
the worker's main process (a hard time-limit kill, a revoke, a lost child)
also wakes the run at once, which an ``after_return`` hook in the child
could not do.

Other commands due at a task's end can ride along too (:class:`Rider`): a
device task's lease release goes in the same round trip as its result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from labq.keys import (
    DONE_STREAM_MAXLEN,
    RUN_KWARG,
    done_key,
    info_key,
    log_key,
    states_key,
    tasks_key,
)
from labq.outcome import status_of

log = logging.getLogger(__name__)

# KEYS: result key [, done stream, states hash, the run's other keys (log,
# info, tasks) whose expiry an end renews]; ARGV: value, expiry (0: none),
# task id, state, stream maxlen, the run's retention, labq status. As
# RedisBackend: never overwrite SUCCESS.
STORE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
local stored = 1
if current then
  local ok, meta = pcall(cjson.decode, current)
  -- ... nor an end settled by a reaper (labq.worker.reaper): a host that
  -- returns must not rewrite it.
  if ok and type(meta) == 'table' and (meta['status'] == 'SUCCESS' or meta['labq_reaped']) then
    stored = 0
  end
end
if stored == 1 then
  if tonumber(ARGV[2]) > 0 then
    redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  redis.call('PUBLISH', KEYS[1], ARGV[1])
end
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'task_id', ARGV[3], 'status', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  if stored == 1 then
    redis.call('HSET', KEYS[3], ARGV[3], ARGV[7])
    redis.call('EXPIRE', KEYS[3], ARGV[6])
  end
  for i = 4, #KEYS do
    redis.call('EXPIRE', KEYS[i], ARGV[6])
  end
end
return stored
"""


@dataclass(frozen=True)
class Rider:
    """Commands to send with a task's next stored end (not ``STARTED``).

    ``queue(pipe)`` queues exactly one command on the store's pipeline; if its
    reply is an error (``NOSCRIPT`` after a Redis restart, say), or the end
    is never stored (an ``Ignore``, a store that failed), ``fallback()``
    does the work on its own. Either way it runs once.
    """

    task_id: str
    queue: Callable[[Any], object]
    fallback: Callable[[], object]


def run_of(request: Any) -> str | None:
    """The labq run id a task request carries, if any."""
    kwargs = getattr(request, "kwargs", None)
    run_id = kwargs.get(RUN_KWARG) if isinstance(kwargs, dict) else None
    return str(run_id) if run_id else None


class LabqRedisBackend(RedisBackend):  # type: ignore[misc]
    """``RedisBackend`` whose state changes take one round trip each, and whose
    final states also announce the task on its run's done stream."""

    #: labq.worker.task_base reads this: the backend announces ends itself.
    announces_done = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._store_script: Any = None
        #: The STARTED state of the run task about to start in this prefork
        #: child, left for LabqTask to write with its start record.
        self._started: tuple[str, tuple[Any, ...]] | None = None
        #: What rides with the end of the task running in this process.
        self._rider: Rider | None = None

    @property
    def run_retention(self) -> int:
        """Seconds a run's keys, its tasks' results among them, are kept."""
        settings = getattr(self.app, "labq_settings", None)
        return max(1, int(settings.run_retention if settings is not None else 7 * 86400))

    def add_rider(self, rider: Rider) -> None:
        """Send ``rider`` with its task's stored end (see :class:`Rider`); it
        replaces the task's earlier rider, and runs a stale one of another task."""
        if self._rider is not None and self._rider.task_id != rider.task_id:
            self._run_fallback()
        self._rider = rider

    def process_cleanup(self) -> None:
        # Celery's tracer calls this after every task in a worker child: a
        # rider whose end was never stored (an Ignore, a failed store) runs now.
        super().process_cleanup()
        self._run_fallback()

    def _run_fallback(self) -> None:
        rider, self._rider = self._rider, None
        if rider is not None:
            _fall_back(rider)

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        if traceback is None and state == states.FAILURE:
            # A hard-killed task: where it was stuck (labq.worker.killing, labq.worker.child_stacks).
            traceback = getattr(request, "labq_stack", None) or None
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        meta["task_id"] = bytes_to_str(task_id)  # type: ignore[no-untyped-call]
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state,
                                    task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        run_id = run_of(request)
        if run_id is not None:  # kept as long as its run (keys.py)
            expires = self.run_retention
        args = (self.get_key_for_task(task_id), value, expires or 0, task_id, state,
                run_id if state in states.READY_STATES else None, status_of(meta).value,
                self.run_retention)
        if state == states.STARTED and run_id is not None and self._defers_started(request):
            self._started = (task_id, args)
            return result
        self.ensure(self._store, args)
        return result

    def _defers_started(self, request: Any) -> bool:
        from labq.worker.task_base import LabqTask

        return isinstance(self.app.tasks.get(getattr(request, "task", None)), LabqTask)

    def take_started(self, task_id: str) -> tuple[Any, ...] | None:
        """The STARTED store left for ``task_id`` (see ``store``), once."""
        pending, self._started = self._started, None
        return pending[1] if pending is not None and pending[0] == task_id else None

    def store(self, args: tuple[Any, ...], pipe: Any = None) -> Any:
        """Store a state (``args`` as ``_store_result`` builds them).

        With ``pipe``, only queue a bare ``EVALSHA`` on it: LabqTask writes
        STARTED in its start-record pipeline. (redis-py would add a ``SCRIPT
        EXISTS`` round trip per pipeline for a registered script.) If that
        reply is ``NOSCRIPT`` (Redis restarted), call ``store(args)`` again.
        """
        if pipe is None:
            return self.ensure(self._store, args)
        keys, argv = _script_input(*args)
        return pipe.evalsha(self._script().sha, len(keys), *keys, *argv)

    def store_settled(self, task_id: str, run_id: str, value: str, status: str,
                      retention: int) -> None:
        """Store a reaper's end of ``task_id`` (labq.worker.reaper), when the
        results live in another Redis than the broker."""
        self.store((self.get_key_for_task(task_id), value, retention, task_id,
                    states.FAILURE, run_id, status, retention))

    def _script(self) -> Any:
        if self._store_script is None:  # EVALSHA, and EVAL again after a Redis restart
            self._store_script = self.client.register_script(STORE_SCRIPT)
            self._store_script.sha = self.client.script_load(STORE_SCRIPT)
        return self._store_script

    def _store(self, *args: Any) -> Any:
        rider = self._rider
        if rider is None or rider.task_id != args[3] or args[4] == states.STARTED:
            return self._store_alone(args)
        pipe = self.client.pipeline(transaction=False)
        rider.queue(pipe)
        self.store(args, pipe)
        # A failed round trip keeps the rider: Celery's retry sends it again.
        ridden, stored = pipe.execute(raise_on_error=False)
        self._rider = None
        if isinstance(ridden, Exception):
            _fall_back(rider)
        if isinstance(stored, redis.exceptions.NoScriptError):
            return self._store_alone(args)  # loads the script again
        if isinstance(stored, Exception):
            raise stored
        return stored

    def _store_alone(self, args: tuple[Any, ...]) -> Any:
        keys, argv = _script_input(*args)
        return self._script()(keys=keys, args=argv)


def _fall_back(rider: Rider) -> None:
    """Run ``rider``'s own path; a failure is logged (the lease expires by TTL)."""
    try:
        rider.fallback()
    except Exception:
        log.exception("the end-of-task commands of task %s failed", rider.task_id)


def _script_input(key: str, value: Any, expires: float, task_id: str, state: str,
                  run_id: str | None, status: str = "",
                  retention: int = 1) -> tuple[list[str], list[Any]]:
    """STORE_SCRIPT's KEYS and ARGV for one state of one task."""
    keys = [key] if run_id is None else [key, done_key(run_id), states_key(run_id),
                                         log_key(run_id), info_key(run_id), tasks_key(run_id)]
    return keys, [value, int(expires), task_id, state, DONE_STREAM_MAXLEN, retention, status]
