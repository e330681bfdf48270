"""What ``labq reservations``, ``labq status`` and ``labq devices`` show of people's reservations."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table

from labq.devices.lease import DeviceLeases, Holder
from labq.devices.reservations import Reservations


def reservation_rows(store: Reservations) -> dict[str, Any]:
    """Live reservations (soonest to end first), people waiting, and the last forced releases."""
    now = time.time()
    return {
        "reservations": [
            {"id": r.id, "devices": list(r.devices), "owner": r.owner, "note": r.note,
             "since": r.since, "until": r.expires_at, "left": round(r.expires_at - now, 1),
             "failed_task": r.task}
            for r in store.all()],
        "waiting": [{"id": rid, "device": device, "position": position}
                    for rid, device, position in store.waiting()],
        "forced": store.force_log(),
    }


def grouped(leases: Iterable[tuple[str, str, str, str, float, float, str]]) -> list[dict[str, Any]]:
    """One row per live reservation, as :func:`reservation_rows` has them, from
    its leases: (device, reservation id, owner, note, since, until, failed task)."""
    now, found = time.time(), dict[str, dict[str, Any]]()
    for device, rid, owner, note, since, until, failed in leases:
        if rid and until > now:
            row = found.setdefault(rid, {
                "id": rid, "devices": [], "owner": owner, "note": note, "since": since,
                "until": until, "left": round(until - now, 1), "failed_task": failed})
            row["devices"].append(device)
    return sorted(found.values(), key=lambda r: (r["until"], r["id"]))


def from_leases(leases: list[DeviceLeases]) -> list[dict[str, Any]]:
    """The reservations among a lease snapshot's holders."""
    return grouped((d.device, h.reservation, h.owner, h.note, h.since, h.expires_at,
                    h.failed_task) for d in leases for h in d.holders)


def holder_text(h: Holder) -> str:
    """A lease holder in a line: a task, or a person's reservation."""
    if h.reservation:
        return (f"reserved for {h.owner or '?'} until "
                f"{time.strftime('%H:%M:%S', time.localtime(h.expires_at))} "
                f"({h.note or 'no note'})")
    return f"{h.holder[:8]} {h.task.rsplit('.', 1)[-1]} @ {h.worker}"


def reservations_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="reservations", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("devices", "owner", "until (left)", "note", "id"):
        table.add_column(col, no_wrap=col not in ("note", "devices"), overflow="fold")
    for r in rows:
        until = time.strftime("%H:%M:%S", time.localtime(r["until"]))
        table.add_row(", ".join(r["devices"]), r["owner"], f"{until} ({_left(r['left'])})",
                      r["note"] or "-", r["id"])
    if not rows:
        table.add_row("-", "nobody holds a device", "", "", "")
    return table


def print_reservations(rows: dict[str, Any], console: Console | None = None) -> None:
    parts: list[Any] = [reservations_table(rows["reservations"])]
    if rows["waiting"]:
        waiting = Table(title="people waiting", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("device", "place in line", "reservation"):
            waiting.add_column(col)
        for w in rows["waiting"]:
            waiting.add_row(w["device"], str(w["position"]), w["id"])
        parts.append(waiting)
    if rows["forced"]:
        forced = Table(title="forced releases (newest first)", title_justify="left",
                       box=box.SIMPLE_HEAD)
        for col in ("when", "by", "devices", "owner", "note"):
            forced.add_column(col)
        for f in rows["forced"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(f.get("at", 0))))
            forced.add_row(when, f.get("by", ""), f.get("devices", ""), f.get("owner", ""),
                           f.get("note", ""))
        parts.append(forced)
    (console or Console()).print(Group(*parts))


def _left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
