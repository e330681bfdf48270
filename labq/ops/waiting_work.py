"""Waiting work by queue and run: what ``labq status`` and ``labq devices``
show of the fair-share backlogs, with each run's owner and priority."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rich import box
from rich.table import Table

from labq.fairshare.backlogs import Backlogs
from labq.keys import info_key
from labq.redis_client import text


@dataclass(frozen=True)
class RunWaiting:
    """One run's tasks waiting for a queue's slots."""

    queue: str
    run_id: str
    #: The name given to ``labq.Run`` (empty once the run's record expired).
    name: str
    owner: str
    priority: str
    waiting: int


def waiting_work(client: redis.Redis) -> list[RunWaiting]:
    """Every run's backlog on every queue, highest priority first, then by queue."""
    backlog = Backlogs(client).waiting()
    if not backlog:
        return []
    pipe = client.pipeline(transaction=False)
    for w in backlog:
        pipe.hmget(info_key(w.run_id), ["name", "owner"])
    rows = []
    for w, (name, owner) in zip(backlog, pipe.execute(), strict=True):
        rows.append(RunWaiting(w.queue, w.run_id, text(name) if name else "",
                               text(owner) if owner else "", w.priority.value, w.tasks))
    order = {"high": 0, "normal": 1, "low": 2}
    return sorted(rows, key=lambda r: (r.queue, order.get(r.priority, 1), -r.waiting, r.run_id))


def waiting_table(rows: list[RunWaiting], limit: int | None = None) -> Table:
    """The rows as a table; an empty lab says so."""
    table = Table(title="waiting work (fair share: by queue and run)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for col in ("queue", "run", "owner", "priority", "waiting"):
        table.add_column(col, justify="right" if col == "waiting" else "left",
                         no_wrap=col != "run", overflow="fold")
    shown = rows if limit is None else rows[:limit]
    for r in shown:
        table.add_row(r.queue, r.run_id, r.owner or "-", r.priority, str(r.waiting))
    if not rows:
        table.add_row("-", "no run waits for a slot", "", "", "0")
    elif limit is not None and len(rows) > limit:
        table.caption = f"{len(rows) - limit} more; labq status --json lists all"
    return table
