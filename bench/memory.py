"""Memory per prefork slot: USS and PSS of each child (psutil ``memory_full_info``).

One worker with ``--slots`` children over the simulated lab, measured:

1. idle, right after the pool forked (nothing ran yet);
2. during an SSH session: every child runs ``tasks.diag.hold_device`` (netmiko
   connected, ``show version`` done, session held);
3. idle again after those tasks ended.

USS is what a child alone owns (what killing it frees); PSS adds its share of
the pages it shares with the main process and its siblings. The worker's main
process (RSS, USS) is shown for scale. ``labq/app.py`` imports netmiko and
paramiko and calls ``gc.freeze()`` before the pool forks.

Run from the repository root: ``.venv/bin/python -m bench.memory [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil

from bench.common import BenchLab, command_line, machine, write_result

MB = 1024 * 1024


def snapshot(lab: BenchLab) -> dict[str, Any]:
    children = []
    for proc in lab.prefork_children():
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        children.append({"pid": proc.pid, "uss": info.uss / MB, "pss": info.pss / MB,
                         "rss": info.rss / MB})
    main = psutil.Process(lab.worker_pids()[0]).memory_full_info()
    return {
        "children": children,
        "uss": _stats([c["uss"] for c in children]), "pss": _stats([c["pss"] for c in children]),
        "main": {"rss": main.rss / MB, "uss": main.uss / MB, "pss": main.pss / MB},
    }


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--slots", type=int, default=8, help="prefork children of the worker (8)")
    p.add_argument("--hold", type=float, default=6.0, help="seconds each session is held (6)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 slots, 3 s hold")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import labq

    args = parse_args(argv)
    if args.quick:
        args.slots, args.hold = 2, 3.0
    command = command_line("bench.memory", argv)
    print(f"memory: 1 worker x {args.slots} slots", flush=True)
    with BenchLab(args.slots, workers=[args.slots]) as lab:
        time.sleep(2.0)  # let the pool settle
        idle = snapshot(lab)
        run = labq.Run("memory", app=lab.app, progress=False, logs=False,
                       soft_time_limit=args.hold + 20, time_limit=args.hold + 30)
        try:
            for name in lab.names:
                run.submit("tasks.diag.hold_device", device=name, seconds=args.hold)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # every slot's session open
                run.refresh()
                if sum(o.status is labq.Status.RUNNING for o in run.outcomes) == args.slots:
                    break
                time.sleep(0.2)
            time.sleep(min(1.0, args.hold / 3))
            session = snapshot(lab)
            outcomes = run.wait(timeout=args.hold + 60)
        finally:
            run.close()
        bad = [o for o in outcomes if o.status is not labq.Status.SUCCEEDED]
        if bad:
            raise RuntimeError(f"hold_device failed: {bad[0].status} {bad[0].error}")
        time.sleep(1.0)
        after = snapshot(lab)
    result = {
        "command": command, "machine": machine(("celery", "billiard", "netmiko", "paramiko", "psutil")),
        "quick": args.quick, "params": {"slots": args.slots, "hold": args.hold},
        "idle": idle, "session": session, "idle_after": after,
        "summary": {"idle_uss_median": idle["uss"]["median"], "target_uss": 15.0,
                    "meets_target": idle["uss"]["max"] <= 15.0},
    }
    write_result("memory" + ("-quick" if args.quick else ""), result)
    for label, snap in (("idle", idle), ("in session", session), ("idle after", after)):
        print(f"{label:11} USS median {snap['uss']['median']:5.1f} MB (max {snap['uss']['max']:5.1f}), "
              f"PSS median {snap['pss']['median']:5.1f} MB; main RSS {snap['main']['rss']:.0f} MB")
    print(f"target USS per idle child <= 15 MB: "
          f"{'met' if result['summary']['meets_target'] else 'MISSED'}")
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
