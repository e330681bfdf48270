"""Scrape time of ``labq exporter`` (labq.ops.metrics): one ``/metrics``
render for a lab of 1,000 devices against one of 100, side by side.

On one real Redis: a testbed of N devices on two queues, a third of them
leased, a tenth with waiters and a tenth with a health state, two workers'
heartbeats and an open run. Each trial renders the registry's text once
(``generate_latest``: every Redis read a scrape makes, and the encoding)
with one registry per lab for the whole run, as the exporter keeps one
(the first scrape also parses the testbed; it is reported apart),
alternating the two labs trial by trial so that both see the same machine.

Run from the repository root: ``.venv/bin/python -m bench.metrics [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest

from bench.common import command_line, machine, percentile, summary, write_result
from labq.devices.health import Health, HealthBook
from labq.devices.lease import Leases
from labq.embedded.redis_server import RedisServer
from labq.embedded.sim.testbeds import device_entry, write_testbed
from labq.keys import info_key, worker_key
from labq.ops.metrics import registry
from labq.settings import Settings

TARGET_MS = 50.0


def lab(tmp: Path, url: str, devices: int, rnd: random.Random) -> Settings:
    """A testbed of ``devices`` in Redis db ``url`` with leases, waiters, health and workers."""
    entries = {f"d{i}": device_entry("127.0.0.1", 20000 + i, queue="lab-a" if i % 2 else "lab-b")
               for i in range(devices)}
    path = write_testbed(tmp / f"testbed-{devices}.yaml", entries, name=f"bench-{devices}")
    client = redis.Redis.from_url(url)
    client.flushdb()
    leases, book = Leases(client), HealthBook(client)
    for i in range(devices):
        if i % 3 == 0:
            leases.acquire(f"d{i}", f"task-{i}", 1, ttl=3600)
            if i % 10 == 0:
                leases.acquire(f"d{i}", f"waiter-{i}", 1)
        if i % 10 == 1:
            book.set(f"d{i}", rnd.choice([Health.GOOD, Health.BAD, Health.MAINTENANCE]),
                     reason="bench", by="bench")
    for w in ("lab-a@bench", "lab-b@bench"):
        client.hset(worker_key(w), mapping={"host": "bench", "pid": 1, "queues": "labq,lab-a",
                                            "concurrency": 8, "busy": 3, "started_at": 0,
                                            "beat_at": time.time()})
        client.expire(worker_key(w), 3600)
    client.hset(info_key("bench-run"), mapping={"name": "bench", "state": "open",
                                                "started_at": time.time()})
    client.close()
    return Settings.load(env={}, config_file=os.devnull, broker_url=url, testbed=path,
                         state_dir=tmp)


def render_ms(reg: CollectorRegistry) -> tuple[float, int]:
    """One scrape's render, as the exporter's one long-lived registry makes it."""
    start = time.perf_counter()
    text = generate_latest(reg)
    return (time.perf_counter() - start) * 1000, len(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--quick", action="store_true", help="smoke run: 10 trials")
    args = p.parse_args(argv)
    trials = 10 if args.quick else args.trials
    rnd = random.Random(1000)
    loadavg_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="labq-bench-metrics-") as tmp_name:
        tmp = Path(tmp_name)
        server = RedisServer(data_dir=tmp / "redis").start()
        try:
            base = server.url.rsplit("/", 1)[0]
            labs = {"big": lab(tmp, f"{base}/1", args.devices, rnd),
                    "small": lab(tmp, f"{base}/2", args.small, rnd)}
            regs = {k: registry(s, redis.Redis.from_url(s.broker_url)) for k, s in labs.items()}
            times: dict[str, list[float]] = {"big": [], "small": []}
            size: dict[str, int] = {}
            first = {k: render_ms(reg)[0] for k, reg in regs.items()}  # parses the testbed
            for _ in range(trials):
                for k in ("big", "small"):
                    ms, size[k] = render_ms(regs[k])
                    times[k].append(ms)
        finally:
            server.stop()
    result: dict[str, Any] = {
        "machine": machine(("redis", "prometheus_client")),
        "command": command_line("bench.metrics", argv),
        "loadavg": {"start": list(loadavg_start), "end": list(os.getloadavg())},
        "params": {"devices": args.devices, "small": args.small, "trials": trials},
        "scrape_ms": {k: {**summary(v), "p95": percentile(v, 95)} for k, v in times.items()},
        "bytes": size,
        "first_scrape_ms": first,
    }
    big = result["scrape_ms"]["big"]
    result["summary"] = {"big_over_small": big["median"] / result["scrape_ms"]["small"]["median"],
                         "meets_target": big["p95"] < TARGET_MS}
    for k in ("big", "small"):
        s = result["scrape_ms"][k]
        print(f"{k} lab ({args.devices if k == 'big' else args.small} devices): scrape median "
              f"{s['median']:.1f} ms (min {s['min']:.1f}, p95 {s['p95']:.1f}, max "
              f"{s['max']:.1f}), {size[k]} bytes")
    print(f"{args.devices} / {args.small} devices: {result['summary']['big_over_small']:.2f}x; "
          f"target p95 < {TARGET_MS:g} ms at {args.devices}: "
          f"{'met' if result['summary']['meets_target'] else 'MISSED'}")
    write_result("metrics", result)
    print(f"reproduce with: {result['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
