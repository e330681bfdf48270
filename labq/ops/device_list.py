"""What ``labq devices`` shows: the testbed joined with live lease state."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from labq.devices.health import HealthBook
from labq.devices.lease import Leases
from labq.devices.pick import Pick
from labq.devices.testbed_yaml import load_testbed
from labq.errors import BrokerUnavailable, ConfigError
from labq.ops.reservation_list import grouped, holder_text, reservations_table
from labq.ops.waiting_work import RunWaiting, waiting_table, waiting_work
from labq.redis_client import connect, unavailable
from labq.settings import Settings


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort ``r2`` before ``r10``: runs of digits compare as numbers."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", name) if part)


def parse_labels(specs: Sequence[str]) -> Pick | None:
    """``("role=spine", "os=iosxe,nxos")`` as a Pick (a comma means any of);
    None when there are none. Refuses a spec without ``=``, naming it."""
    labels: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError("--labels", spec, "give NAME=VALUE, such as role=spine "
                              "(VALUE may list several, comma-separated)")
        labels.setdefault(key.strip(), []).extend(v.strip() for v in value.split(",") if v.strip())
    return Pick(**labels) if labels else None


def device_rows(settings: Settings, labels: Pick | None = None) -> list[dict[str, Any]]:
    """One row per testbed device, plus any leased device the testbed lacks;
    with ``labels``, only the testbed devices that match."""
    testbed = load_testbed(settings.testbed)
    client = connect(settings.broker_url, settings, socket_timeout=5)
    try:
        state = {d.device: d for d in Leases(client).snapshot()}
        names = set(testbed.devices) | set(state) if labels is None else {
            d.name for d in testbed if labels.matches(d)}
        health = HealthBook(client).get(names)
    except redis.RedisError as exc:
        raise BrokerUnavailable(unavailable(settings.broker_url, exc, settings)) from exc
    finally:
        client.close()
    rows = []
    for name in sorted(names, key=natural_key):
        dev = testbed.devices.get(name)
        leases = state.get(name)
        rows.append({
            "device": name,
            "queue": (dev.queue or settings.default_queue) if dev else "?",
            "max_sessions": dev.max_sessions if dev else None,
            "address": dev.address if dev else "",
            "labels": dev.all_labels if dev else {},
            "health": {"state": health[name].state.value, "reason": health[name].reason,
                       "since": health[name].since, "by": health[name].by},
            "holders": [
                {"task_id": h.holder, "task": h.task, "worker": h.worker,
                 "since": h.since, "expires_at": h.expires_at,
                 "with": [d for d in h.devices if d != name],
                 "reservation": h.reservation, "owner": h.owner, "note": h.note,
                 "who": holder_text(h)}
                for h in (leases.holders if leases else [])
            ],
            "waiters": [
                {"task_id": w.holder, "position": w.position, "since": w.since}
                for w in (leases.waiters if leases else [])
            ],
        })
    return rows


def waiting_rows(settings: Settings) -> list[RunWaiting]:
    """The work waiting for each queue's slots, by run (:mod:`labq.ops.waiting_work`)."""
    client = connect(settings.broker_url, settings, socket_timeout=5)
    try:
        return waiting_work(client)
    except redis.exceptions.NoPermissionError:
        return []  # a Redis user without the fair-share keys: the devices alone
    except redis.RedisError as exc:
        raise BrokerUnavailable(unavailable(settings.broker_url, exc, settings)) from exc
    finally:
        client.close()


def print_device_rows(rows: list[dict[str, Any]], console: Console | None = None,
                      waiting: list[RunWaiting] | None = None) -> None:
    now = time.time()
    table = Table(title="devices")
    for col in ("device", "health", "queue", "labels", "sessions",
                "holders (task @ worker, held, expires in; with its other devices)", "waiters"):
        table.add_column(col)
    for row in rows:
        holders = "\n".join(
            f"{h['who']}, "
            f"{now - h['since']:.0f}s, {h['expires_at'] - now:.0f}s"
            + (f"; with {', '.join(h['with'])}" if h.get("with") else "")
            for h in row["holders"])
        waiters = ", ".join(f"{w['position']}:{w['task_id'][:8]}" for w in row["waiters"])
        own = {k: v for k, v in row["labels"].items() if k not in ("os", "type")}
        health = row["health"]
        shown = health["state"] + (f" ({health['reason']})"
                                   if health["state"] not in ("good", "unknown") else "")
        table.add_row(row["device"], shown, row["queue"],
                      " ".join(f"{k}={v}" for k, v in own.items()),
                      f"{len(row['holders'])}/{row['max_sessions'] or '?'}", holders, waiters)
    console = console or Console()
    console.print(table)
    console.print(reservations_table(grouped(
        (row["device"], h["reservation"], h["owner"], h["note"], h["since"], h["expires_at"], "")
        for row in rows for h in row["holders"])))
    if waiting is not None:
        console.print(waiting_table(waiting))

