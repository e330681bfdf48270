"""A small run behind a big one: issue 15's baseline, before any fair share.

Run A submits ``--backlog`` tasks of ``--seconds`` each (2,000 x 0.2 s) to
one worker of ``--slots`` slots (8); ``--delay`` seconds later (3) run B
submits ``--small`` of the same (16). B's makespan, from its first submit
to its last result, is measured against B alone on the idle lab, the two
sides alternated in one run. Each queue is FIFO today, so B waits for A's
backlog; the figure to beat once fair share lands is about 2 x the idle
makespan. After B ends, A is cancelled (its queued messages are purged).

Run from the repository root: ``.venv/bin/python -m bench.fairshare [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import BenchLab, command_line, machine, summary, write_result


def small_run(lab: BenchLab, n: int, seconds: float) -> float:
    """Seconds from B's first submit to its last result."""
    import labq
    from tasks.diag import sleep

    t0 = time.perf_counter()
    with labq.Run("fairshare-b", app=lab.app, progress=False, logs=False) as run:
        run.submit_many(sleep, [{"seconds": seconds}] * n)
        outcomes = run.wait(timeout=3600)
    elapsed = time.perf_counter() - t0
    if not all(o.ok for o in outcomes):
        raise RuntimeError(f"run B: {[o.error for o in outcomes if not o.ok][:3]}")
    return elapsed


def behind(lab: BenchLab, backlog: int, n: int, seconds: float, delay: float) -> float:
    """B's makespan when it comes ``delay`` s after A's ``backlog`` tasks."""
    import labq
    from tasks.diag import sleep

    big = labq.Run("fairshare-a", app=lab.app, progress=False, logs=False)
    try:
        big.submit_many(sleep, [{"seconds": seconds}] * backlog)
        time.sleep(delay)
        return small_run(lab, n, seconds)
    finally:
        big.cancel(grace=2 * seconds + 1)
        big.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fairshare",
                                description=__doc__.split("\n")[0])
    p.add_argument("--backlog", type=int, default=2000, help="run A's tasks (2000)")
    p.add_argument("--small", type=int, default=16, help="run B's tasks (16)")
    p.add_argument("--seconds", type=float, default=0.2, help="each task's sleep (0.2)")
    p.add_argument("--slots", type=int, default=8, help="the worker's prefork slots (8)")
    p.add_argument("--delay", type=float, default=3.0, help="B starts this long after A (3)")
    p.add_argument("--rounds", type=int, default=2, help="idle/behind pairs (2)")
    p.add_argument("--quick", action="store_true", help="smoke run: a backlog of 200, 1 round")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.backlog, args.rounds = 200, 1
    command = command_line("bench.fairshare", argv)
    rounds: list[dict[str, Any]] = []
    with BenchLab(0, workers=[args.slots], name="bench-fairshare") as lab:
        small_run(lab, args.slots, 0.0)  # warm-up: imports, connections, first forks
        for i in range(args.rounds):
            idle = small_run(lab, args.small, args.seconds)
            late = behind(lab, args.backlog, args.small, args.seconds, args.delay)
            rounds.append({"round": i + 1, "idle": idle, "behind": late, "ratio": late / idle})
            print(f"round {i + 1}: B alone {idle:.2f} s, behind A {late:.2f} s, "
                  f"ratio {late / idle:.1f}", flush=True)
    backlog_s = args.backlog * args.seconds / args.slots
    result = {
        "command": command, "machine": machine(("celery", "kombu", "redis")),
        "quick": args.quick,
        "params": {k: getattr(args, k) for k in
                   ("backlog", "small", "seconds", "slots", "delay", "rounds")},
        "rounds": rounds,
        "summary": {"idle_s": summary([r["idle"] for r in rounds]),
                    "behind_s": summary([r["behind"] for r in rounds]),
                    "ratio": summary([r["ratio"] for r in rounds]),
                    "backlog_s": backlog_s, "target_ratio": 2.0},
    }
    write_result("fairshare" + ("-quick" if args.quick else ""), result)
    s = result["summary"]
    print(f"B behind A / B alone: median {s['ratio']['median']:.1f} (A's backlog alone is "
          f"{backlog_s:.0f} s of the worker's time); issue 15's target <= 2.0: "
          f"{'met' if s['ratio']['median'] <= 2.0 else 'not met (no fair share yet)'}")
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
