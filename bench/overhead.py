"""Framework overhead: N no-op tasks (``tasks.diag.echo``), labq against raw Celery.

A. labq: ``Run.submit_many(echo, ...)`` then ``Run.wait()``, with fair share
   (the default: the run's tasks go through its backlog, labq.fairshare).
B. raw Celery: ``group(echo.s(i) ...).apply_async()`` then ``.get()``.
C. labq with ``fair_share=False`` (client and workers alike: every task
   straight onto the queue's list), to price the fair-share machinery.

All on the same workers (same app settings: late acks, prefetch 1, events,
``task_track_started``), alternated A B C A B C; the workers' refills do
nothing when no backlog waits. Each side's time runs from the
first publish to the last result in the client. Throughput = N / time.

Run from the repository root: ``.venv/bin/python -m bench.overhead [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import (
    BenchLab,
    command_line,
    cpu_delta,
    machine,
    own_cpu,
    summary,
    write_result,
)

PACKAGES = ("celery", "kombu", "redis")


def run_labq(lab: BenchLab, n: int, app: Any = None) -> dict[str, Any]:
    import labq
    from tasks.diag import echo

    t0 = time.perf_counter()
    run = labq.Run("overhead", app=app or lab.app, progress=False, logs=False)
    try:
        run.submit_many(echo, [{"value": i} for i in range(n)])
        submitted = time.perf_counter() - t0
        outcomes = run.wait(timeout=600)
    finally:
        run.close()
    elapsed = time.perf_counter() - t0
    values = [o.value for o in outcomes]
    if values != list(range(n)):
        raise RuntimeError("labq: results missing or out of order")
    return {"seconds": elapsed, "submitted": submitted, "tasks_per_s": n / elapsed}


def run_celery(lab: BenchLab, n: int) -> dict[str, Any]:
    from celery import group

    echo = lab.app.tasks["tasks.diag.echo"]
    t0 = time.perf_counter()
    result = group(echo.s(i) for i in range(n)).apply_async()
    submitted = time.perf_counter() - t0
    values = result.get(timeout=600)
    elapsed = time.perf_counter() - t0
    result.forget()
    if values != list(range(n)):
        raise RuntimeError("celery: results missing or out of order")
    return {"seconds": elapsed, "submitted": submitted, "tasks_per_s": n / elapsed}


def measured(lab: BenchLab, fn: Any, n: int, *args: Any) -> dict[str, Any]:
    before, mine = lab.cpu(), own_cpu()
    result: dict[str, Any] = fn(lab, n, *args)
    result["cpu"] = {"client": own_cpu() - mine, **cpu_delta(before, lab.cpu())}
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", "-n", type=int, default=5000, help="no-op tasks per side (5000)")
    p.add_argument("--workers", type=int, nargs="+", default=[4, 4],
                   help="prefork slots of each worker (4 4)")
    p.add_argument("--rounds", type=int, default=3, help="measured A B pairs (3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 tasks, 1 round")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.tasks, args.rounds = 300, 1
    command = command_line("bench.overhead", argv)
    n = args.tasks
    print(f"overhead: {n} no-op tasks, workers {args.workers}, rounds={args.rounds}", flush=True)
    from labq.app import create_app

    with BenchLab(0, workers=args.workers, name="bench-overhead") as lab:
        fifo = create_app(lab.stack.settings.replace(fair_share=False))
        run_labq(lab, min(n, 500))  # warm-up: imports, connections, first forks' pages
        run_celery(lab, min(n, 500))
        run_labq(lab, min(n, 500), fifo)
        rounds = []
        for i in range(args.rounds):
            a = measured(lab, run_labq, n)
            b = measured(lab, run_celery, n)
            c = measured(lab, run_labq, n, fifo)
            ratio = a["tasks_per_s"] / b["tasks_per_s"]
            fair = a["tasks_per_s"] / c["tasks_per_s"]
            rounds.append({"round": i + 1, "A": a, "B": b, "C": c, "ratio": ratio,
                           "fair_over_fifo": fair, "fifo_ratio": c["tasks_per_s"] / b["tasks_per_s"]})
            print(f"round {i + 1}: labq {a['tasks_per_s']:.0f} tasks/s, celery "
                  f"{b['tasks_per_s']:.0f} tasks/s, labq without fair share "
                  f"{c['tasks_per_s']:.0f} tasks/s; labq / celery {ratio:.3f}, "
                  f"fair share / without {fair:.3f}", flush=True)
        fifo.close()
    ratios = [r["ratio"] for r in rounds]
    result = {
        "command": command, "machine": machine(PACKAGES), "quick": args.quick,
        "params": {"tasks": n, "workers": args.workers, "rounds": args.rounds,
                   "task": "tasks.diag.echo"},
        "rounds": rounds,
        "summary": {
            "A_tasks_per_s": summary([r["A"]["tasks_per_s"] for r in rounds]),
            "B_tasks_per_s": summary([r["B"]["tasks_per_s"] for r in rounds]),
            "C_tasks_per_s": summary([r["C"]["tasks_per_s"] for r in rounds]),
            "fair_over_fifo": summary([r["fair_over_fifo"] for r in rounds]),
            "fifo_ratio": summary([r["fifo_ratio"] for r in rounds]),
            "ratio": summary(ratios), "target": 0.90,
            "meets_target": statistics.median(ratios) >= 0.90,
        },
    }
    write_result("overhead" + ("-quick" if args.quick else ""), result)
    s = result["summary"]
    print(f"labq / celery throughput ratio: median {s['ratio']['median']:.3f} "
          f"(min {s['ratio']['min']:.3f}, max {s['ratio']['max']:.3f}); target >= 0.90: "
          f"{'met' if s['meets_target'] else 'MISSED'}; with / without fair share: median "
          f"{s['fair_over_fifo']['median']:.3f}")
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
