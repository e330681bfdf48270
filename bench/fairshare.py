"""A small run behind a big one: issue 15's fair share, against a FIFO queue.

Run A submits ``--backlog`` tasks of ``--seconds`` each (2,000 x 0.2 s) to
one worker of ``--slots`` slots (8); ``--delay`` seconds later (3) run B
submits ``--small`` of the same (16). B's makespan, from its first submit
to its last result, is measured three ways, alternated in one run: B alone
on the idle lab; B behind A with fair share (the default); and B behind A
with ``fair_share=False`` on both clients, where the queue is one FIFO list
and B waits for A's backlog. The target is fair share <= 2 x the idle
makespan. Before B ends, A has gone on (its tasks started meanwhile are
counted); then A is cancelled (its backlog and queued messages dropped).

Run from the repository root: ``.venv/bin/python -m bench.fairshare [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import BenchLab, command_line, machine, summary, write_result


def small_run(lab: BenchLab, n: int, seconds: float, app: Any = None) -> float:
    """Seconds from B's first submit to its last result."""
    import labq
    from tasks.diag import sleep

    t0 = time.perf_counter()
    with labq.Run("fairshare-b", app=app or lab.app, progress=False, logs=False) as run:
        run.submit_many(sleep, [{"seconds": seconds}] * n)
        outcomes = run.wait(timeout=3600)
    elapsed = time.perf_counter() - t0
    if not all(o.ok for o in outcomes):
        raise RuntimeError(f"run B: {[o.error for o in outcomes if not o.ok][:3]}")
    return elapsed


def behind(lab: BenchLab, backlog: int, n: int, seconds: float, delay: float,
           app: Any) -> tuple[float, int]:
    """B's makespan when it comes ``delay`` s after A's ``backlog`` tasks, and
    how many of A's tasks ended succeeded (A goes on while B runs)."""
    import labq
    from tasks.diag import sleep

    big = labq.Run("fairshare-a", app=app, progress=False, logs=False)
    try:
        big.submit_many(sleep, [{"seconds": seconds}] * backlog)
        time.sleep(delay)
        took = small_run(lab, n, seconds, app)
        big.refresh()
        done = sum(o.ok for o in big.outcomes)
        return took, done
    finally:
        big.cancel(grace=2 * seconds + 1)
        finals = [o.status for o in big.outcomes]
        if len(finals) != backlog or not all(s.final for s in finals):
            raise RuntimeError(f"run A: {len(finals)} outcomes, not all final, after its cancel")
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
    from labq.app import create_app

    with BenchLab(0, workers=[args.slots], name="bench-fairshare") as lab:
        fifo = create_app(lab.stack.settings.replace(fair_share=False))
        small_run(lab, args.slots, 0.0)  # warm-up: imports, connections, first forks
        for i in range(args.rounds):
            idle = small_run(lab, args.small, args.seconds)
            fair, a_fair = behind(lab, args.backlog, args.small, args.seconds, args.delay,
                                  lab.app)
            plain, a_plain = behind(lab, args.backlog, args.small, args.seconds, args.delay,
                                    fifo)
            rounds.append({"round": i + 1, "idle": idle, "behind": fair, "ratio": fair / idle,
                           "a_done": a_fair, "fifo": plain, "fifo_ratio": plain / idle,
                           "fifo_a_done": a_plain})
            print(f"round {i + 1}: B alone {idle:.2f} s, behind A with fair share {fair:.2f} s "
                  f"(ratio {fair / idle:.2f}; A ended {a_fair} meanwhile), FIFO {plain:.2f} s "
                  f"(ratio {plain / idle:.1f})", flush=True)
        fifo.close()
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
                    "fifo_s": summary([r["fifo"] for r in rounds]),
                    "fifo_ratio": summary([r["fifo_ratio"] for r in rounds]),
                    "backlog_s": backlog_s, "target_ratio": 2.0},
    }
    write_result("fairshare" + ("-quick" if args.quick else ""), result)
    s = result["summary"]
    print(f"B behind A / B alone, fair share: median {s['ratio']['median']:.2f}; FIFO: "
          f"{s['fifo_ratio']['median']:.1f} (A's backlog alone is {backlog_s:.0f} s of the "
          f"worker's time); issue 15's target <= 2.0: "
          f"{'met' if s['ratio']['median'] <= 2.0 else 'MISSED'}")
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
