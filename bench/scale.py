"""Scale: one ``execute`` (connect + ``show version``) on each of N simulated
devices, served by one sim process, with 2 workers x 32 prefork slots.

Submitted with ``Run.submit_many`` and gathered with ``Run.wait``. Reports the
makespan, tasks/s, Redis memory (``INFO memory`` before, after and peak) and
the CPU split between the client, the workers' main processes, their prefork
children, Redis and the simulated lab (psutil CPU-time deltas).

Run from the repository root: ``.venv/bin/python -m bench.scale [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import redis

from bench.common import (
    BenchLab,
    busy_cpu,
    command_line,
    cpu_delta,
    machine,
    own_cpu,
    summary,
    write_result,
)

COMMAND = "show version"


def redis_memory(client: redis.Redis) -> dict[str, int]:
    info: Any = client.info("memory")
    return {k: int(info[k]) for k in ("used_memory", "used_memory_peak", "used_memory_rss")}


def one_round(lab: BenchLab, timeout: float) -> dict[str, Any]:
    import labq
    from tasks.device import execute

    client = redis.Redis.from_url(lab.stack.settings.broker_url)
    mem0 = redis_memory(client)
    before, mine = lab.cpu(), own_cpu()
    busy0, _ = busy_cpu()
    t0 = time.perf_counter()
    run = labq.Run("scale", app=lab.app, progress=False, logs=False)
    try:
        run.submit_many(execute, [{"device": n, "command": COMMAND} for n in lab.names])
        submitted = time.perf_counter() - t0
        outcomes = run.wait(timeout=timeout)
    finally:
        run.close()
    makespan = time.perf_counter() - t0
    busy1, _ = busy_cpu()
    cpu = {"client": own_cpu() - mine, **cpu_delta(before, lab.cpu())}
    cpu["other"] = max(0.0, (busy1 - busy0) - sum(cpu.values()))
    mem1 = redis_memory(client)
    client.close()
    failed = [o for o in outcomes if o.status is not labq.Status.SUCCEEDED]
    return {"makespan": makespan, "submitted": submitted, "tasks": len(outcomes),
            "tasks_per_s": len(outcomes) / makespan, "failed": len(failed),
            "first_failure": str(failed[0].error) if failed else None,
            "workers": sorted({o.worker or "?" for o in outcomes}),
            "cpu": cpu, "redis_before": mem0, "redis_after": mem1}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--devices", "-n", type=int, default=1000, help="simulated devices (1000)")
    p.add_argument("--slots", type=int, default=32, help="prefork slots per worker; 2 workers (32)")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds after a warm-up (2)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--quick", action="store_true", help="smoke run: 60 devices, 2 x 4 slots, 1 round")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.devices, args.slots, args.rounds = 60, 4, 1
    command = command_line("bench.scale", argv)
    print(f"scale: {args.devices} devices, 2 workers x {args.slots} slots", flush=True)
    t_start = time.perf_counter()
    with BenchLab(args.devices, workers=[args.slots, args.slots], name="bench-scale") as lab:
        started = time.perf_counter() - t_start
        warm = one_round(lab, args.timeout)
        print(f"warm-up: {warm['makespan']:.1f} s, {warm['failed']} failed", flush=True)
        rounds = []
        for i in range(args.rounds):
            r = one_round(lab, args.timeout)
            rounds.append(r)
            print(f"round {i + 1}: {r['makespan']:.1f} s, {r['tasks_per_s']:.1f} tasks/s, "
                  f"{r['failed']} failed; Redis used {r['redis_after']['used_memory'] / 2**20:.1f} MiB"
                  f" (peak {r['redis_after']['used_memory_peak'] / 2**20:.1f}); CPU s "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu"].items()), flush=True)
    result = {
        "command": command, "quick": args.quick,
        "machine": machine(("celery", "kombu", "redis", "netmiko", "paramiko", "asyncssh")),
        "params": {"devices": args.devices, "workers": [args.slots, args.slots],
                   "rounds": args.rounds, "command": COMMAND},
        "stack_start": started, "warmup": warm, "rounds": rounds,
        "summary": {"makespan": summary([r["makespan"] for r in rounds]),
                    "tasks_per_s": summary([r["tasks_per_s"] for r in rounds]),
                    "failed": sum(r["failed"] for r in rounds)},
    }
    write_result("scale" + ("-quick" if args.quick else ""), result)
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
