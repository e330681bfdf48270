"""What a run knows of its tasks, shared by the run and its cancel: calls,
order, outcomes, queues.

:class:`labq.client.run.Run` owns one :class:`RunState`; the cancel
(:mod:`labq.client.cancel`) takes it as an argument and changes it only
through its methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from labq.outcome import Outcome, Status


@dataclass(frozen=True)
class Call:
    """What one task was sent with: its queue (a cancel purges it) and limits."""

    name: str
    args: list[Any]
    #: The keyword arguments, the run's reserved ones included.
    body: dict[str, Any] = field(repr=False)
    queue: str
    soft: float | None
    hard: float | None


class RunState:
    """The tasks of one run: each call, the submit order and the latest outcome."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        #: Set by a cancel: no more submits, and stops are the run's own.
        self.cancelled = False
        #: Task id that replaced each one run again after its worker died.
        self.reruns: dict[str, str] = {}
        self._order: list[str] = []
        self._outcomes: dict[str, Outcome] = {}
        self._calls: dict[str, Call] = {}
        self._queues: set[str] = set()
        #: Tasks before this index in ``_order`` are all final (``pending``).
        self._settled = 0

    # -- adding tasks -----------------------------------------------------

    def track(self, task_id: str, call: Call, device: str | None, at: datetime) -> None:
        """A task published at ``at``: queued, at the end of the order."""
        self._queues.add(call.queue)
        self._calls[task_id] = call
        self._order.append(task_id)
        self._outcomes[task_id] = Outcome(task_id=task_id, task=call.name, device=device,
                                          status=Status.QUEUED, queued_at=at)

    def replace(self, old_id: str, new_id: str) -> Outcome:
        """``new_id`` runs ``old_id``'s call again, in its place (a worker sent
        it after the first one's worker died: labq.worker.reaper); its queued outcome."""
        call = self._calls[old_id]
        self._queues.add(call.queue)
        self._calls[new_id] = call
        old = self._outcomes.pop(old_id)
        self._order[self._order.index(old_id)] = new_id
        new = Outcome(task_id=new_id, task=old.task, device=old.device, status=Status.QUEUED,
                      queued_at=datetime.now(timezone.utc))
        self._outcomes[new_id] = new
        self.reruns[old_id] = new_id
        return new

    # -- reading ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._outcomes

    def outcome(self, task_id: str) -> Outcome:
        return self._outcomes[task_id]

    def call(self, task_id: str) -> Call:
        return self._calls[task_id]

    @property
    def outcomes(self) -> list[Outcome]:
        """Every outcome so far, in submit order."""
        return [self._outcomes[t] for t in self._order]

    @property
    def queues(self) -> frozenset[str]:
        """Every queue a task of the run was sent to."""
        return frozenset(self._queues)

    def pending(self) -> list[str]:
        """The ids of the tasks not final yet, in submit order."""
        # A final outcome stays final, so the settled prefix is skipped: a
        # long-lived run (one per testscript) pays for its pending tasks only.
        order, outcomes, i = self._order, self._outcomes, self._settled
        while i < len(order) and outcomes[order[i]].status.final:
            i += 1
        self._settled = i
        return [t for t in order[i:] if not outcomes[t].status.final]

    def running(self) -> list[str]:
        """The pending tasks a worker has started."""
        return [t for t in self.pending() if self._outcomes[t].status is Status.RUNNING]

    # -- settling ---------------------------------------------------------

    def update(self, outcome: Outcome) -> None:
        """The latest outcome of a task the run tracks."""
        if outcome.task_id not in self._outcomes:
            raise KeyError(f"task {outcome.task_id!r} is not in run {self.run_id!r}")
        self._outcomes[outcome.task_id] = outcome

    def end(self, task_ids: Iterable[str], status: Status, **changes: Any) -> list[Outcome]:
        """Give ``task_ids`` the final ``status`` (and ``changes``); their outcomes."""
        ended = []
        for task_id in task_ids:
            new = self._outcomes[task_id].with_status(status, **changes)
            self._outcomes[task_id] = new
            ended.append(new)
        return ended
