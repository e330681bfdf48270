"""Fan-out: connect + ``show version`` on N simulated devices at total concurrency C.

Up to four sides, alternated (A B C D A B C D ...) in one invocation, against
the same simulated lab (``--sides``; issue 3's run uses A and B):

A. labq: ``labq.pcall(tasks.device.execute, device=[...])`` on the embedded
   stack (real Redis, two prefork workers of C/2 slots each, all devices on
   the default queue that both consume).
B. local: ``multiprocessing.Pool(C)`` (fork context) running the same netmiko
   code, ``open_session`` + ``execute`` + ``close``, one device per call.
C. celery: raw ``group(execute.s(device=...) ...).apply_async().get()`` with
   the same app settings and workers as A, without ``labq.Run``.
D. pcall: pyATS ``pcall`` of the same function as B, in waves of C calls
   (pcall starts one process per call and has no concurrency limit).

What is warm, and what each makespan counts:

- Both sides get one unmeasured warm-up pass over all N devices first.
- A counts, from before ``labq.Run`` is made to the return of ``pcall``: the
  Run's Redis ping, routing and publishing N messages, the workers' dispatch,
  the lease, the SSH session, storing the result, and the client's polling
  until it has seen the last result. The workers and their prefork children
  are already up (as on a lab), so their start is not counted.
- B counts, from before ``Pool(C)`` is made to the return of ``pool.map``:
  forking the C children, the SSH sessions, and returning results. The
  pool's teardown after the results are in is not counted. ``netmiko`` and
  the testbed are loaded in the parent before the fork, as labq's workers
  preload them.
- B's and D's processes run at the niceness labq gives its prefork children
  (``child_nice``, 10 by default), so every side's task code has the same
  priority against the simulated lab; only labq's worker main processes
  (and Redis) run at the default.

The ideal makespan is ``ceil(N/C) x t1`` where ``t1`` is the median of
``--samples`` serial connect + ``show version`` + close on one device.

Run from the repository root: ``.venv/bin/python -m bench.fanout``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import busy_cpu, command_line, display, source_version, summary, tree_cpu
from bench.common import machine as common_machine

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COMMAND = "show version"

#: The testbed side B's children read; loaded in the parent before the fork.
_TESTBED: Any = None
#: Niceness of the pool's and pcall's processes: labq's ``child_nice``.
_NICE = 0
_niced: set[int] = set()


def _renice() -> None:
    """Once per process: the niceness labq's prefork children run at."""
    if _NICE and os.getpid() not in _niced:
        _niced.add(os.getpid())
        os.nice(_NICE)


# -- side B: the same netmiko code under a local multiprocessing.Pool ---------


def local_task(name: str) -> tuple[str, float, float, int]:
    """connect + ``show version`` + close on ``name``: (device, start, end, pid)."""
    from labq.devices.drivers import open_session

    _renice()
    start = time.time()
    session = open_session(_TESTBED.device(name))
    try:
        out = session.execute(COMMAND)
    finally:
        session.close()
    end = time.time()
    if f"{name} uptime is" not in out:
        raise RuntimeError(f"{name}: unexpected output {out[:200]!r}")
    return name, start, end, os.getpid()


def run_local(names: Sequence[str], concurrency: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    cpu0 = os.times()
    t0 = time.perf_counter()
    wall0 = time.time()
    with ctx.Pool(concurrency) as pool:
        results = pool.map(local_task, names, chunksize=1)
        makespan = time.perf_counter() - t0
    cpu1 = os.times()  # the pool's children are reaped now: their CPU is in the totals
    starts = [r[1] for r in results]
    ends = [r[2] for r in results]
    return {
        "makespan": makespan,
        "tasks": len(results),
        "first_start": min(starts) - wall0,
        "last_end": max(ends) - wall0,
        "tail": makespan - (max(ends) - wall0),
        "task_median": statistics.median(e - s for s, e in zip(starts, ends, strict=True)),
        "busy": sum(e - s for s, e in zip(starts, ends, strict=True)),
        "gap_median": slot_gaps([(str(r[3]), r[1], r[2]) for r in results]),
        "cpu": {
            "client": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "children": (cpu1.children_user - cpu0.children_user)
            + (cpu1.children_system - cpu0.children_system),
        },
    }


def slot_gaps(spans: Sequence[tuple[str, float, float]]) -> float:
    """Median idle time of a slot between the end of one task and the start of its next."""
    by_slot: dict[str, list[tuple[float, float]]] = {}
    for slot, start, end in spans:
        by_slot.setdefault(slot, []).append((start, end))
    gaps = []
    for runs in by_slot.values():
        runs.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(runs)]
    return statistics.median(gaps) if gaps else 0.0


# -- side A: labq.pcall on the embedded stack ---------------------------------


def run_labq(app: Any, names: Sequence[str], timeout: float) -> dict[str, Any]:
    import labq
    from tasks.device import execute

    cpu0 = os.times()
    t0 = time.perf_counter()
    wall0 = time.time()
    run = labq.Run("bench", app=app, progress=False)
    try:
        outputs = labq.pcall(execute, device=list(names), ckwargs={"command": COMMAND},
                             timeout=timeout, run=run)
        makespan = time.perf_counter() - t0
        outcomes = run.outcomes
    finally:
        run.close()
    cpu1 = os.times()
    for name, out in zip(names, outputs, strict=True):
        if f"{name} uptime is" not in str(out):
            raise RuntimeError(f"{name}: unexpected output {str(out)[:200]!r}")
    starts = [o.started_at.timestamp() for o in outcomes if o.started_at]
    ends = [o.finished_at.timestamp() for o in outcomes if o.finished_at]
    durations = [o.duration for o in outcomes if o.duration is not None]
    queued = [o.queued_at.timestamp() for o in outcomes if o.queued_at]
    return {
        "makespan": makespan,
        "tasks": len(outputs),
        "submitted": max(queued) - wall0,
        "first_start": min(starts) - wall0,
        "last_end": max(ends) - wall0,
        "tail": makespan - (max(ends) - wall0),
        "task_median": statistics.median(durations),
        "busy": sum(durations),
        "gap_median": slot_gaps([(o.slot or "?", o.started_at.timestamp(), o.finished_at.timestamp())
                                 for o in outcomes if o.started_at and o.finished_at]),
        "workers": sorted({o.worker or "?" for o in outcomes}),
        "cpu": {"client": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)},
    }


def run_celery(app: Any, names: Sequence[str], timeout: float) -> dict[str, Any]:
    from celery import group

    execute = app.tasks["tasks.device.execute"]
    cpu0 = os.times()
    t0 = time.perf_counter()
    result = group(execute.s(device=n, command=COMMAND) for n in names).apply_async()
    outputs = result.get(timeout=timeout)
    makespan = time.perf_counter() - t0
    cpu1 = os.times()
    result.forget()
    _check_outputs(names, outputs)
    return {"makespan": makespan, "tasks": len(outputs),
            "cpu": {"client": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}}


def run_pcall(names: Sequence[str], concurrency: int) -> dict[str, Any]:
    from pyats.async_ import pcall

    cpu0 = os.times()
    t0 = time.perf_counter()
    results: list[Any] = []
    for start in range(0, len(names), concurrency):  # pcall has no concurrency limit
        results += pcall(local_task, name=list(names[start:start + concurrency]))
    makespan = time.perf_counter() - t0
    cpu1 = os.times()
    return {"makespan": makespan, "tasks": len(results),
            "task_median": statistics.median(r[2] - r[1] for r in results),
            "cpu": {"client": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
                    "children": (cpu1.children_user - cpu0.children_user)
                    + (cpu1.children_system - cpu0.children_system)}}


def _check_outputs(names: Sequence[str], outputs: Sequence[Any]) -> None:
    for name, out in zip(names, outputs, strict=True):
        if f"{name} uptime is" not in str(out):
            raise RuntimeError(f"{name}: unexpected output {str(out)[:200]!r}")


SIDES = {"labq": "A", "pool": "B", "celery": "C", "pcall": "D"}


# -- CPU accounting of the long-lived processes --------------------------------


def service_cpu(stack: Any, sim: Any) -> dict[str, float]:
    """CPU seconds so far of the workers' main processes, their prefork
    children, Redis and the simulated lab."""
    trees = sum(tree_cpu(p.pid) for p in stack.processes.values())
    mains = sum(tree_cpu(p.pid, children=False) for p in stack.processes.values())
    redis_proc = stack.redis.process if stack.redis else None
    return {"worker_main": mains, "worker_children": trees - mains,
            "redis": tree_cpu(redis_proc.pid if redis_proc else None), "sim": tree_cpu(sim.pid)}


def measured(fn: Any, stack: Any, sim: Any) -> dict[str, Any]:
    """Run ``fn`` and add the CPU each long-lived process used meanwhile, and
    ``other``: the busy CPU of the whole host that none of this bench's processes used."""
    before = service_cpu(stack, sim)
    busy0, steal0 = busy_cpu()
    result: dict[str, Any] = fn()
    busy1, steal1 = busy_cpu()
    after = service_cpu(stack, sim)
    for key, value in after.items():
        result["cpu"][key] = max(0.0, value - before[key])
    result["cpu"]["other"] = max(0.0, (busy1 - busy0) - sum(result["cpu"].values()))
    result["cpu"]["steal"] = steal1 - steal0
    return result


# -- the serial per-task time ---------------------------------------------------


def serial_task_time(testbed: Any, device: str, samples: int) -> list[float]:
    from labq.devices.drivers import open_session

    times = []
    for i in range(samples + 1):  # the first one imports and warms up: dropped
        t0 = time.perf_counter()
        session = open_session(testbed.device(device))
        session.execute(COMMAND)
        session.close()
        if i:
            times.append(time.perf_counter() - t0)
    return times


# -- reporting --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return common_machine(("celery", "kombu", "redis", "netmiko", "paramiko", "asyncssh"))


def print_table(rounds: list[dict[str, Any]], sides: Sequence[str], ideal: float) -> None:
    head = f"{'round':>5} {'side':<7} {'makespan s':>10} {'/ideal':>7} {'/pool':>6}"
    print(head)
    print("-" * len(head))
    for r in rounds:
        for side in sides:
            m = r["sides"][side]["makespan"]
            print(f"{r['round']:>5} {side:<7} {m:10.2f} {m / ideal:7.2f} "
                  f"{m / r['sides']['pool']['makespan']:6.3f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n")[0])
    p.add_argument("--devices", "-n", type=int, default=200, help="N simulated devices (200)")
    p.add_argument("--concurrency", "-c", type=int, default=32,
                   help="C, total: labq splits it over two workers, the pool gets all (32)")
    p.add_argument("--latency", type=float, default=0.0,
                   help="simulated command latency in seconds, per command (0; issue 7 uses 0.2)")
    p.add_argument("--rounds", type=int, default=3, help="measured A B pairs (3)")
    p.add_argument("--samples", type=int, default=10, help="serial samples for the per-task time (10)")
    p.add_argument("--timeout", type=float, default=300.0, help="pcall timeout per round (300)")
    p.add_argument("--sides", default="labq,pool",
                   help="comma-separated, from labq,pool,celery,pcall (labq,pool); "
                        "ratios are to pool")
    p.add_argument("--loglevel", default="INFO", help="the workers' --loglevel (INFO, as labq up)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 40 devices, C=8, 1 round, 3 samples")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON file (bench/results/fanout.json, or fanout-latency<L>.json with --latency)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.devices, args.concurrency, args.rounds, args.samples = 40, 8, 1, 3
    sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown or "pool" not in sides:
        raise SystemExit(f"--sides: unknown {sorted(unknown)} or no pool (ratios are to pool)")
    if args.concurrency < 2 or args.concurrency % 2:
        raise SystemExit("--concurrency must be even: it is split over two workers")
    global _TESTBED, _NICE
    from bench.common import BenchLab

    started = time.perf_counter()
    n, c = args.devices, args.concurrency
    name = "fanout" + (f"-latency{args.latency:g}" if args.latency else "") + (
        "-quick" if args.quick else "")
    output = args.output or RESULTS_DIR / f"{name}.json"
    command = command_line("bench.fanout", argv)
    facts = machine()
    load_start = os.getloadavg()
    print(f"fan-out: N={n} devices, C={c}, latency={args.latency:g} s, sides={sides}, "
          f"rounds={args.rounds}; nproc={facts['nproc']}, memory={facts['memory_total_gib']} GiB",
          flush=True)

    t_stack = time.perf_counter()
    with BenchLab(n, latency=args.latency, workers=[c // 2, c // 2], name="bench-fanout",
                  loglevel=args.loglevel) as lab:
        stack_start = time.perf_counter() - t_stack
        names = lab.names
        _TESTBED = lab.testbed
        _NICE = lab.stack.settings.child_nice
        t1_samples = serial_task_time(_TESTBED, names[0], args.samples)
        t1 = statistics.median(t1_samples)
        ideal = math.ceil(n / c) * t1
        print(f"per-task time t1 = {t1:.3f} s (median of {args.samples}, serial, {names[0]}); "
              f"ideal = ceil({n}/{c}) x t1 = {ideal:.2f} s", flush=True)
        runners = {
            "labq": lambda: run_labq(lab.app, names, args.timeout),
            "pool": lambda: run_local(names, c),
            "celery": lambda: run_celery(lab.app, names, args.timeout),
            "pcall": lambda: run_pcall(names, c),
        }
        print(f"stack up in {stack_start:.1f} s; warming up every side", flush=True)
        warm = {side: runners[side]()["makespan"] for side in sides}
        print("warm-up: " + ", ".join(f"{k} {v:.2f} s" for k, v in warm.items()), flush=True)
        rounds: list[dict[str, Any]] = []
        for i in range(args.rounds):
            measured_sides = {side: measured(runners[side], lab.stack, lab.sim) for side in sides}
            for res in measured_sides.values():
                if "busy" in res:
                    res["utilisation"] = res["busy"] / (c * res["makespan"])
            pool = measured_sides["pool"]["makespan"]
            ratios = {side: res["makespan"] / pool for side, res in measured_sides.items()}
            rounds.append({"round": i + 1, "sides": measured_sides, "ratios": ratios})
            print(f"round {i + 1}: " + ", ".join(
                f"{side} {measured_sides[side]['makespan']:.2f} s ({ratios[side]:.3f})"
                for side in sides), flush=True)

    per_side = {side: {
        "makespan": summary([r["sides"][side]["makespan"] for r in rounds]),
        "over_ideal": summary([r["sides"][side]["makespan"] / ideal for r in rounds]),
        "over_pool": summary([r["ratios"][side] for r in rounds]),
    } for side in sides}
    labq_ratio = per_side["labq"]["over_pool"] if "labq" in sides else None
    result = {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "quick": args.quick,
        "machine": facts,
        "source": source_version(),
        "params": {"devices": n, "concurrency": c, "workers": [c // 2, c // 2],
                   "latency": args.latency, "rounds": args.rounds, "samples": args.samples,
                   "command": COMMAND, "sides": sides, "worker_loglevel": args.loglevel,
                   "change_wait": _change_wait()},
        "per_task": {"median": t1, "samples": t1_samples},
        "ideal": ideal,
        "stack_start": stack_start,
        "warmup": warm,
        "rounds": rounds,
        "summary": {
            "sides": per_side,
            "ratio": labq_ratio,
            "target": 1.10,
            "meets_target": labq_ratio is not None and labq_ratio["median"] <= 1.10,
        },
        "elapsed": time.perf_counter() - started,
        "loadavg": {"start": list(load_start), "end": list(os.getloadavg())},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print_table(rounds, sides, ideal)
    print()
    print(f"ideal ceil({n}/{c}) x {t1:.3f} s = {ideal:.2f} s")
    for side in sides:
        ps = per_side[side]
        print(f"{side:7} makespan median {ps['makespan']['median']:.2f} s "
              f"({ps['over_ideal']['median']:.2f} x ideal), / pool median "
              f"{ps['over_pool']['median']:.3f} (min {ps['over_pool']['min']:.3f}, "
              f"max {ps['over_pool']['max']:.3f})")
    if labq_ratio:
        print(f"labq / pool target <= 1.10: {'met' if result['summary']['meets_target'] else 'MISSED'}")
    others = [r["sides"][s]["cpu"].get("other", 0.0) for r in rounds for s in sides]
    if others and max(others) > 2.0:
        print(f"warning: other processes on this host used up to {max(others):.1f} CPU s in one "
              "measured run; the figures are noisy (see cpu.other in the JSON)")
    print(f"wrote {display(output)} in {result['elapsed']:.0f} s; reproduce with: {command}")
    return 0


def _change_wait() -> float:
    from labq.client import run

    return float(run.CHANGE_WAIT)


if __name__ == "__main__":
    sys.exit(main())
