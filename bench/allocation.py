"""Allocation: what a Pick and a 3-role topology cost against a named device.

On one real Redis holding a lab of N devices with W waiters in line:

- **cost**: the time of one lease request (grant and release, or a refused
  try) for a named single device (``Leases.acquire``), a Pick of a pool of
  12 (``acquire_set`` with one slot of 12 candidates) and a named 3-role
  topology (three slots of one), interleaved trial by trial so that the
  sides see the same machine; and the Pick's cost in a lab ten times
  smaller, which stays the same if the scripts are O(matches), not O(lab);
- **wait to start**: a waiter parked as a worker's is (``Leases.park``) on
  devices a blocker holds; the blocker releases, the script that frees a
  device pushes the waiter's message onto its list, the waiter pops it (as
  a worker's BRPOP does) and asks again; the time from the release to its
  grant is measured, for each side, interleaved. Celery's own delivery of
  the message to a prefork child comes on top.

Run from the repository root: ``.venv/bin/python -m bench.allocation [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.common import command_line, machine, summary, write_result
from labq.devices.lease import Grant, Leases, SetGrant
from labq.embedded.redis_server import RedisServer
from labq.worker.device_task import POLL

POOL = 12
SPARE = 20


def fill(leases: Leases, devices: int, waiters: int, rnd: random.Random) -> None:
    """Every device held by a filler task; ``waiters`` in line, spread over the
    last ``SPARE`` devices, which no trial uses (they never poll, so they would
    be ahead of a trial's named waiter until they expire)."""
    for i in range(devices):
        leases.acquire(f"d{i}", f"fill-{i}", 1, ttl=600)
    for w in range(waiters):
        leases.acquire(f"d{devices - 1 - rnd.randrange(SPARE)}", f"waiter-{w}", 1)


def trial_base(devices: int, rnd: random.Random) -> int:
    return rnd.randrange(0, devices - SPARE - POOL)


def sides(base: int) -> dict[str, Callable[[Leases, str], Any]]:
    """The three requests, on devices d{base}.. that the trial frees first."""
    pool = [(f"d{base + i}", 1) for i in range(POOL)]
    return {
        "named": lambda lz, h: lz.acquire(f"d{base}", h, 1),
        "pick": lambda lz, h: lz.acquire_set([pool], h),
        "topology3": lambda lz, h: lz.acquire_set([[(f"d{base + i}", 1)] for i in range(3)], h),
    }


def cost_trials(leases: Leases, devices: int, trials: int, rnd: random.Random,
                free: bool) -> dict[str, list[float]]:
    """Microseconds per request, each side in turn in every trial."""
    out: dict[str, list[float]] = {k: [] for k in sides(0)}
    for t in range(trials):
        base = trial_base(devices, rnd)
        if free:
            for i in range(POOL):
                leases.release(f"d{base + i}", f"fill-{base + i}")
        order = list(sides(base).items())
        rnd.shuffle(order)
        for name, call in order:
            holder = f"{name}-{t}"
            t0 = time.perf_counter()
            got = call(leases, holder)
            out[name].append((time.perf_counter() - t0) * 1e6)
            leases.release_all(holder)
            assert not free or got is not None
        if free:
            for i in range(POOL):
                leases.acquire(f"d{base + i}", f"fill-{base + i}", 1, ttl=600)
    return out


def parked_waiter(leases: Leases, name: str, call: Callable[[Leases, str], Any],
                  slots: list[list[tuple[str, int]]], holder: str, at: list[float],
                  granted: threading.Event) -> None:
    """A worker's waiter: ask, park its retry, and ask again once woken (its
    message popped off its own queue, as a worker's BRPOP would)."""
    queue = f"bench-queue-{holder}"
    while True:
        got = call(leases, holder)
        if isinstance(got, (Grant, SetGrant)):
            at.append(time.perf_counter())
            granted.set()
            return
        if leases.park(holder, slots, [], since=got.waiting_since, wake_in=10.0,
                       queue_key=queue, message=holder, single=name == "named"):
            assert leases.client.brpop([queue], timeout=10), f"{holder} was never woken"
        else:
            time.sleep(POLL)  # a session opened meanwhile


def wait_to_start(leases: Leases, devices: int, trials: int,
                  rnd: random.Random) -> dict[str, list[float]]:
    """Milliseconds from the blocker's release to the parked waiter's grant."""
    out: dict[str, list[float]] = {k: [] for k in sides(0)}
    for t in range(trials):
        base = trial_base(devices, rnd)
        order = list(sides(base).items())
        rnd.shuffle(order)
        for name, call in order:
            holder, granted = f"w-{name}-{t}", threading.Event()
            at: list[float] = []
            thread = threading.Thread(target=parked_waiter, args=(
                leases, name, call, slots_of(name, base), holder, at, granted))
            thread.start()
            time.sleep(rnd.uniform(0.1, 0.2))  # parked for a while
            released = time.perf_counter()
            for i in range(POOL):
                leases.release(f"d{base + i}", f"fill-{base + i}")
            assert granted.wait(10), f"{name} never got its devices"
            thread.join()
            out[name].append((at[0] - released) * 1e3)
            leases.release_all(holder)
            for i in range(POOL):
                leases.acquire(f"d{base + i}", f"fill-{base + i}", 1, ttl=600)
    return out


def slots_of(name: str, base: int) -> list[list[tuple[str, int]]]:
    """The candidates each side's request names, as ``Leases.park`` takes them."""
    if name == "named":
        return [[(f"d{base}", 1)]]
    if name == "pick":
        return [[(f"d{base + i}", 1) for i in range(POOL)]]
    return [[(f"d{base + i}", 1)] for i in range(3)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.allocation",
                                description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=1000, help="devices in the lab (1000)")
    p.add_argument("--waiters", type=int, default=200, help="waiters in line (200)")
    p.add_argument("--trials", type=int, default=300, help="cost trials per side (300)")
    p.add_argument("--waits", type=int, default=40, help="wait-to-start trials per side (40)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 devices, 20 waiters")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.devices, args.waiters, args.trials, args.waits = 100, 20, 30, 5
    command = command_line("bench.allocation", argv)
    rnd = random.Random(14)
    result: dict[str, Any] = {"command": command, "quick": args.quick,
                              "machine": machine(("redis",)),
                              "params": {"devices": args.devices, "waiters": args.waiters,
                                         "trials": args.trials, "waits": args.waits,
                                         "pool": POOL, "poll": POLL}}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            client = redis.Redis.from_url(server.url)
            for size in (max(args.devices // 10, 2 * (POOL + SPARE)), args.devices):
                client.flushall()
                leases = Leases(client)
                fill(leases, size, args.waiters, rnd)
                key = "lab" if size == args.devices else "small_lab"
                result[key] = {
                    "devices": size,
                    "cost_free_us": {k: summary(v) for k, v in
                                     cost_trials(leases, size, args.trials, rnd, True).items()},
                    "cost_busy_us": {k: summary(v) for k, v in
                                     cost_trials(leases, size, args.trials, rnd, False).items()},
                }
                print(f"{size} devices: " + ", ".join(
                    f"{k} {v['median']:.0f} us" for k, v in result[key]["cost_free_us"].items()),
                    flush=True)
            waits = wait_to_start(leases, args.devices, args.waits, rnd)
            result["wait_to_start_ms"] = {k: summary(v) for k, v in waits.items()}
            print("wait to start: " + ", ".join(
                f"{k} {v['median']:.1f} ms" for k, v in result["wait_to_start_ms"].items()))
            client.close()
        finally:
            server.stop()
    big, small = result["lab"]["cost_free_us"], result["small_lab"]["cost_free_us"]
    result["summary"] = {
        "pick_over_named": big["pick"]["median"] / big["named"]["median"],
        "topology3_over_named": big["topology3"]["median"] / big["named"]["median"],
        "pick_lab_over_small_lab": big["pick"]["median"] / small["pick"]["median"],
    }
    print(", ".join(f"{k} {v:.2f}" for k, v in result["summary"].items()))
    write_result("allocation" + ("-quick" if args.quick else ""), result)
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
