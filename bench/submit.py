"""Submit rate: N no-op tasks published by the client, nothing consuming them.

A. ``Run.submit`` in a loop (one ``send_task`` per task);
B. ``Run.submit_many`` (``labq/client/publish.py``: validated first, then Redis
   pipelines of 500 messages, payloads built as kombu's producer builds them), with the
   ``task-sent`` events labq's settings ask for;
B'. the same with ``sent_events=False``;
B''. ``submit_many`` with ``fair_share=False``: the messages go straight onto
   the queue's list instead of the run's fair-share backlog (issue 15);
C. raw Celery ``echo.delay(i)`` in a loop, the naive reference.

No worker runs, so publishing has the CPU to itself (with fair share, every
message waits in the run's backlog, as no slot is free); the queue and the
backlog are emptied between sides. Alternated A B B' B'' C A B B' B'' C.
Rate = N / seconds from the first call to the return of the last.

Run from the repository root: ``.venv/bin/python -m bench.submit [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from bench.common import BenchLab, command_line, machine, own_cpu, summary, write_result

SIDES = ("submit", "submit_many", "submit_many_noevents", "submit_many_nofair", "delay")


def run_side(lab: BenchLab, side: str, n: int, fifo: Any) -> dict[str, Any]:
    import labq
    from labq.fairshare.backlogs import Backlogs
    from labq.keys import backlog_key
    from tasks.diag import echo

    client = redis.Redis.from_url(lab.stack.settings.broker_url)
    queue = lab.stack.settings.default_queue
    client.delete(queue)
    run = labq.Run("submit-rate", app=fifo if side.endswith("nofair") else lab.app,
                   progress=False, logs=False)
    cpu0 = own_cpu()
    t0 = time.perf_counter()
    try:
        if side == "submit":
            for i in range(n):
                run.submit(echo, value=i)
        elif side.startswith("submit_many"):
            run.submit_many(echo, [{"value": i} for i in range(n)],
                            sent_events=side == "submit_many")
        else:
            task = lab.app.tasks["tasks.diag.echo"]
            for i in range(n):
                task.delay(i)
        seconds = time.perf_counter() - t0
        cpu = own_cpu() - cpu0
        queued = int(client.llen(queue)) + int(client.llen(backlog_key(queue, run.id)))
    finally:
        Backlogs(client).drop(run.id, [queue])
        run.close()
        client.delete(queue)
        client.close()
    if queued != n:
        raise RuntimeError(f"{side}: {queued} of {n} messages in the queue")
    return {"seconds": seconds, "tasks_per_s": n / seconds, "client_cpu": cpu}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.submit", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", "-n", type=int, default=10000, help="tasks per side (10000)")
    p.add_argument("--rounds", type=int, default=3, help="measured A B C rounds (3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 500 tasks, 1 round")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.tasks, args.rounds = 500, 1
    command = command_line("bench.submit", argv)
    n = args.tasks
    print(f"submit rate: {n} tasks per side, rounds={args.rounds}", flush=True)
    from labq.app import create_app

    with BenchLab(0, workers=()) as lab:
        fifo = create_app(lab.stack.settings.replace(fair_share=False))
        for side in SIDES:  # warm-up
            run_side(lab, side, min(n, 200), fifo)
        rounds = []
        for i in range(args.rounds):
            r: dict[str, Any] = {"round": i + 1}
            for side in SIDES:
                r[side] = run_side(lab, side, n, fifo)
            rounds.append(r)
            print(f"round {i + 1}: " + ", ".join(
                f"{side} {r[side]['tasks_per_s']:.0f}/s" for side in SIDES), flush=True)
        fifo.close()
    rate: Callable[[str], dict[str, float]] = lambda side: summary(  # noqa: E731
        [r[side]["tasks_per_s"] for r in rounds])
    batch = rate("submit_many")
    result = {
        "command": command, "machine": machine(), "quick": args.quick,
        "params": {"tasks": n, "rounds": args.rounds, "task": "tasks.diag.echo", "chunk": 500},
        "rounds": rounds,
        "summary": {
            **{f"{side}_tasks_per_s": rate(side) for side in SIDES},
            "batch_over_loop": summary([r["submit_many"]["tasks_per_s"] / r["submit"]["tasks_per_s"]
                                        for r in rounds]),
            "target": 5000, "meets_target": statistics.median(
                [r["submit_many"]["tasks_per_s"] for r in rounds]) >= 5000,
        },
    }
    write_result("submit" + ("-quick" if args.quick else ""), result)
    print(f"submit_many median {batch['median']:.0f} tasks/s (min {batch['min']:.0f}, max "
          f"{batch['max']:.0f}); target >= 5000: "
          f"{'met' if result['summary']['meets_target'] else 'MISSED'}")
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
