"""Per-run backlogs in Redis, dispatched fairly onto each queue's list.

A run's messages do not go straight onto their queue's Redis list, where
Celery's workers would take them first in, first out. They go onto the
run's backlog for that queue (:func:`labq.keys.backlog_key`), and the
scripts (:mod:`labq.fairshare.scripts`) move them onto the list only while
the queue's workers have free slots that no listed message waits for. So
the list stays a short window, and whatever is in a backlog is still open
to the rule of who goes next:

- a ``high`` run's task goes before a ``normal`` one's, and ``normal``
  before ``low``, except that a run whose last dispatch is ``priority_age``
  seconds old goes next whatever its class (the starvation bound);
- within a class, the run with the lowest *pass* goes: its count of
  dispatches. A run that starts waiting joins ``fair_credit`` dispatches
  behind the lowest pass already waiting (or where it left off, if that is
  further on): a newcomer takes up to ``fair_credit`` turns in a row, and
  from then on the waiting runs alternate, round-robin;
- a run's own tasks go in the order they were submitted.

Moves happen when a run submits (:meth:`Backlogs.submit`), when a task ends
and gives its slot back (:meth:`Backlogs.ended`, from the prefork child),
and every second from each worker's sweep (:meth:`Backlogs.refill`), which
also picks up what a crash left behind. Workers' free slots come from their
heartbeats (:meth:`Backlogs.register`) and a busy count their children keep
(:meth:`Backlogs.started`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from labq.fairshare import scripts
from labq.fairshare.priority import Priority
from labq.keys import (
    FAIR_ALIVE_KEY,
    FAIR_BUSY_KEY,
    FAIR_PREFIX,
    FAIR_QUEUES_KEY,
    FAIR_SLOTS_KEY,
    backlog_key,
    fair_queue_key,
)
from labq.redis_client import text
from labq.settings import Settings

#: The most messages one script call moves onto a queue.
MAX_MOVE = 64


@dataclass(frozen=True)
class Waiting:
    """A run's tasks waiting in its backlog for one queue."""

    queue: str
    run_id: str
    priority: Priority
    tasks: int


class Backlogs:
    """The fair-share state in one Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        self.client = client
        settings = settings or Settings()
        self._head = (FAIR_PREFIX, int(settings.priority_age * 1000), settings.fair_credit,
                      MAX_MOVE)
        self._submit = client.register_script(scripts.SUBMIT)
        self._ended = client.register_script(scripts.ENDED)
        self._refill = client.register_script(scripts.REFILL)
        self._drop = client.register_script(scripts.DROP)

    def _args(self, *rest: Any) -> list[Any]:
        return [*self._head, *rest]

    def submit(self, queue: str, run_id: str, priority: Priority, messages: Sequence[str],
               pipe: Any = None) -> Any:
        """Put ``messages`` (kombu's text, oldest first) on ``run_id``'s backlog
        for ``queue`` and dispatch what the queue has room for, atomically.

        On ``pipe`` the call is queued (its reply is the count moved).
        """
        return self._submit(keys=[], args=self._args(queue, run_id, priority.rank, *messages),
                            client=pipe or self.client)

    def ended(self, worker: str, queue: str) -> int:
        """A task from ``queue`` gave its slot on ``worker`` back: dispatch into it."""
        return int(self._ended(keys=[], args=self._args(worker, queue)))

    def refill(self, queues: Iterable[str]) -> int:
        """Dispatch onto each of ``queues`` what its free slots have room for."""
        names = list(queues)
        return int(self._refill(keys=[], args=self._args(*names))) if names else 0

    def drop(self, run_id: str, queues: Iterable[str]) -> int:
        """Drop ``run_id``'s backlogs on ``queues`` (it was cancelled); how many messages."""
        names = list(queues)
        return int(self._drop(keys=[], args=self._args(run_id, *names))) if names else 0

    @staticmethod
    def started(pipe: Any, worker: str) -> None:
        """Count a slot of ``worker`` busy (queued on the task's start round trip)."""
        pipe.hincrby(FAIR_BUSY_KEY, worker, 1)

    @staticmethod
    def register(pipe: Any, worker: str, queues: Iterable[str], size: int, busy: int,
                 ttl: float, now: float) -> None:
        """Queue a heartbeat's record of ``worker``'s slots on ``pipe``.

        ``busy`` (the pool's own count) corrects the children's count, which
        a killed child leaves one too high.
        """
        pipe.hset(FAIR_SLOTS_KEY, worker, size)
        pipe.hset(FAIR_BUSY_KEY, worker, busy)
        pipe.zadd(FAIR_ALIVE_KEY, {worker: int((now + ttl) * 1000)})
        for queue in queues:
            pipe.sadd(fair_queue_key(queue, "workers"), worker)

    def unregister(self, worker: str) -> None:
        """``worker`` stops: its slots are gone at once."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(FAIR_ALIVE_KEY, worker)
        pipe.hdel(FAIR_SLOTS_KEY, worker)
        pipe.hdel(FAIR_BUSY_KEY, worker)
        pipe.execute()

    def waiting(self, queues: Iterable[str] | None = None) -> list[Waiting]:
        """Every run's waiting tasks, by queue (every queue with a backlog by default)."""
        names = sorted(text(q) for q in (self.client.smembers(FAIR_QUEUES_KEY)
                                         if queues is None else queues))
        ranks = [p for p in Priority]
        out: list[Waiting] = []
        for queue in names:
            raw = self.client.hgetall(fair_queue_key(queue, "rank"))
            runs = sorted((text(r), int(c)) for r, c in raw.items())
            if not runs:
                continue
            pipe = self.client.pipeline(transaction=False)
            for run_id, _ in runs:
                pipe.llen(backlog_key(queue, run_id))
            for (run_id, c), n in zip(runs, pipe.execute(), strict=True):
                out.append(Waiting(queue, run_id, ranks[min(c, 2)], int(n)))
        return out
