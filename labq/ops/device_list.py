"""What ``labq devices`` shows: the testbed joined with live lease state."""

from __future__ import annotations

import re
import time
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from labq.devices.lease import Leases
from labq.devices.testbed_yaml import load_testbed
from labq.errors import BrokerUnavailable
from labq.redis_client import connect, unavailable
from labq.settings import Settings


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort ``r2`` before ``r10``: runs of digits compare as numbers."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", name) if part)


def device_rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per testbed device, plus any leased device the testbed lacks."""
    testbed = load_testbed(settings.testbed)
    client = connect(settings.broker_url, settings, socket_timeout=5)
    try:
        state = {d.device: d for d in Leases(client).snapshot()}
    except redis.RedisError as exc:
        raise BrokerUnavailable(unavailable(settings.broker_url, exc, settings)) from exc
    finally:
        client.close()
    rows = []
    for name in sorted(set(testbed.devices) | set(state), key=natural_key):
        dev = testbed.devices.get(name)
        leases = state.get(name)
        rows.append({
            "device": name,
            "queue": (dev.queue or settings.default_queue) if dev else "?",
            "max_sessions": dev.max_sessions if dev else None,
            "address": dev.address if dev else "",
            "holders": [
                {"task_id": h.holder, "task": h.task, "worker": h.worker,
                 "since": h.since, "expires_at": h.expires_at}
                for h in (leases.holders if leases else [])
            ],
            "waiters": [
                {"task_id": w.holder, "position": w.position, "since": w.since}
                for w in (leases.waiters if leases else [])
            ],
        })
    return rows


def print_device_rows(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    now = time.time()
    table = Table(title="devices")
    for col in ("device", "queue", "sessions", "holders (task @ worker, held, expires in)",
                "waiters"):
        table.add_column(col)
    for row in rows:
        holders = "\n".join(
            f"{h['task_id'][:8]} {h['task'].rsplit('.', 1)[-1]} @ {h['worker']}, "
            f"{now - h['since']:.0f}s, {h['expires_at'] - now:.0f}s"
            for h in row["holders"])
        waiters = ", ".join(f"{w['position']}:{w['task_id'][:8]}" for w in row["waiters"])
        table.add_row(row["device"], row["queue"],
                      f"{len(row['holders'])}/{row['max_sessions'] or '?'}", holders, waiters)
    (console or Console()).print(table)
