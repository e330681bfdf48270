"""Round trip: one no-op task submitted, then gathered; p50 and p99.

A. labq: one ``Run`` for all trials; each trial is ``run.submit(echo)`` then
   ``run.wait()`` (the wait blocks on the run's done stream, see
   ``labq.client.streams.RunStreams.wait``).
B. raw Celery: ``echo.delay(i).get()`` (the result backend's pubsub).

Same workers, trials alternated in blocks of 10 (A B A B ...). Each trial is
timed from before the submit to the return of the gather.

Run from the repository root: ``.venv/bin/python -m bench.roundtrip [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import BenchLab, command_line, machine, percentile, write_result

BLOCK = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=500, help="trials per side (500)")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 2],
                   help="prefork slots of each worker (2 2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 40 trials")
    return p.parse_args(argv)


def stats(ms: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "min": min(ms), "max": max(ms), "mean": statistics.mean(ms)}


def main(argv: Sequence[str] | None = None) -> int:
    import labq

    args = parse_args(argv)
    if args.quick:
        args.trials = 40
    command = command_line("bench.roundtrip", argv)
    print(f"round trip: {args.trials} trials per side, workers {args.workers}", flush=True)
    a_ms: list[float] = []
    b_ms: list[float] = []
    with BenchLab(0, workers=args.workers) as lab:
        echo = lab.app.tasks["tasks.diag.echo"]
        run = labq.Run("roundtrip", app=lab.app, progress=False)
        try:
            for i in range(20):  # warm-up
                run.submit(echo, value=i)
                run.wait(timeout=60)
                echo.delay(i).get(timeout=60)
            while len(a_ms) < args.trials:
                for _ in range(BLOCK):
                    t0 = time.perf_counter()
                    run.submit(echo, value=1)
                    (last, *_rest) = run.wait(timeout=60)[-1:]
                    a_ms.append((time.perf_counter() - t0) * 1000)
                    if last.status is not labq.Status.SUCCEEDED:
                        raise RuntimeError(f"labq trial ended {last.status}")
                for _ in range(BLOCK):
                    t0 = time.perf_counter()
                    echo.delay(1).get(timeout=60)
                    b_ms.append((time.perf_counter() - t0) * 1000)
        finally:
            run.close()
    a_ms, b_ms = a_ms[:args.trials], b_ms[:args.trials]
    result: dict[str, Any] = {
        "command": command, "machine": machine(), "quick": args.quick,
        "params": {"trials": args.trials, "workers": args.workers, "block": BLOCK,
                   "task": "tasks.diag.echo"},
        "A_ms": a_ms, "B_ms": b_ms,
        "summary": {"A": stats(a_ms), "B": stats(b_ms),
                    "target": {"p50": 5.0, "p99": 15.0}},
    }
    s = result["summary"]
    s["meets_target"] = s["A"]["p50"] <= 5.0 and s["A"]["p99"] <= 15.0
    write_result("roundtrip" + ("-quick" if args.quick else ""), result)
    for side, name in (("A", "labq Run"), ("B", "celery delay().get()")):
        print(f"{name:22} p50 {s[side]['p50']:6.1f} ms  p90 {s[side]['p90']:6.1f} ms  "
              f"p99 {s[side]['p99']:6.1f} ms  max {s[side]['max']:6.1f} ms")
    print(f"targets p50 <= 5 ms, p99 <= 15 ms: {'met' if s['meets_target'] else 'MISSED'}")
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
