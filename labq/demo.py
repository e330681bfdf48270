"""``labq demo``: the embedded stack, a fan-out, a results table, teardown."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import click
from celery.result import AsyncResult
from rich.console import Console
from rich.table import Table

from labq.settings import Settings
from labq.stack import Stack


@dataclass(frozen=True)
class DemoCall:
    task: str
    kwargs: dict[str, Any]
    queue: str
    soft_time_limit: float | None = None
    time_limit: float | None = None


def demo_calls(count: int) -> list[DemoCall]:
    """A mix of diag tasks over both lab hosts, with one failure and one hard kill."""
    calls = [
        DemoCall("tasks.diag.sleep", {"seconds": 0.5}, "lab-a" if i % 2 else "lab-b")
        for i in range(max(count - 3, 0))
    ]
    calls.append(DemoCall("tasks.diag.burn", {"seconds": 0.5}, "lab-a"))
    calls.append(DemoCall("tasks.diag.fail", {"message": "demo failure"}, "lab-b"))
    calls.append(DemoCall("tasks.diag.stubborn", {"seconds": 60}, "lab-a",
                          soft_time_limit=1, time_limit=2))
    return calls


def run_demo(settings: Settings, count: int = 24, keep: bool = False) -> int:
    console = Console()
    stack = Stack(settings, redis_port=0)
    console.print("starting the embedded stack: Redis, workers lab-a and lab-b, Flower ...")
    try:
        stack.start()
        from labq.app import create_app

        app = create_app(stack.settings)
        calls = demo_calls(count)
        started = time.monotonic()
        results = [
            app.send_task(c.task, kwargs=c.kwargs, queue=c.queue,
                          soft_time_limit=c.soft_time_limit, time_limit=c.time_limit)
            for c in calls
        ]
        table = Table(title=f"{len(calls)} diagnostic tasks")
        for col in ("#", "task", "status", "worker", "result"):
            table.add_column(col)
        for i, (call, res) in enumerate(zip(calls, results, strict=True)):
            table.add_row(str(i), call.task.rsplit(".", 1)[-1], *_describe(res))
        console.print(table)
        console.print(f"makespan {time.monotonic() - started:.2f} s")
        console.print(f"Flower: {stack.flower_url} (user {stack.settings.flower_user!r}, "
                      f"password {stack.settings.flower_password!r})")
        if keep:
            console.print(stack.export_line())
            click.pause("stack kept up; press any key to stop it")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        stack.stop()


def _describe(res: AsyncResult) -> tuple[str, str, str]:
    try:
        value = res.get(timeout=120, propagate=False)
    except Exception as exc:
        return "TIMEOUT", "-", type(exc).__name__
    worker = (res.worker or "-").split("@")[0]
    if res.successful():
        return "SUCCESS", worker, str(value)[:60]
    return res.state, worker, f"{type(value).__name__}: {value}"[:60]
