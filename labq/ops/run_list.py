"""What ``labq runs`` shows: the run registry (:mod:`labq.client.run_info`) with counts."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redis
from rich import box
from rich.console import Console
from rich.table import Table

from labq.client.run_info import RunInfo, all_runs
from labq.keys import RERUN_STATUS, states_key, tasks_key
from labq.outcome import Status
from labq.redis_client import text

#: The states a run's record takes.
STATES = ("open", "done", "cancelled")


def run_rows(client: redis.Redis, *, owner: str | None = None, state: str | None = None,
             since: float | None = None) -> list[dict[str, Any]]:
    """Every run in the registry, newest first, with its task count by status
    (``queued`` counts the tasks without a final status yet)."""
    runs = [r for r in all_runs(client)
            if (owner is None or r.owner == owner) and (state is None or r.state == state)
            and (since is None or r.started_at >= time.time() - since)]
    pipe = client.pipeline(transaction=False)
    for r in runs:
        pipe.llen(tasks_key(r.id))
        pipe.hvals(states_key(r.id))
    replies = pipe.execute() if runs else []
    rows = []
    for i, r in enumerate(runs):
        finals = Counter(text(v) for v in replies[2 * i + 1])
        # A task its dead worker's peer sent again is one task, not two (labq.worker.reaper).
        total = int(replies[2 * i]) - finals[RERUN_STATUS]
        counts = {s.value: finals.get(s.value, 0) for s in Status if s.final}
        rows.append({**_fields(r), "tasks": total,
                     "counts": {"queued": max(0, total - sum(counts.values())), **counts}})
    return rows


def _fields(r: RunInfo) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "owner": r.owner, "priority": r.priority,
            "state": r.state, "host": r.host, "pid": r.pid, "script": r.script,
            "started_at": r.started_at, "ended_at": r.ended_at}


def print_runs(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(title="runs (newest first)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("run", "owner (priority)", "state", "started", "tasks: by status"):
        # The run id and the counts fold on a narrow terminal; the rest stays whole.
        table.add_column(col, no_wrap=col in ("state", "started"), overflow="fold")
    for r in rows:
        counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if v) or "none yet"
        started = time.strftime("%m-%d %H:%M", time.localtime(r["started_at"]))
        table.add_row(r["id"], f"{r['owner'] or '-'} ({r['priority']})", r["state"], started,
                      f"{r['tasks']}: {counts}")
    if not rows:
        table.add_row("-", "no run matches", "", "", "")
    (console or Console()).print(table)
