"""What a simulated device records about its sessions, and its fault knobs.

Tests read these through the control endpoint to assert that a session
really closed and that no device ever held more sessions than its lease
allows. Only usernames and command lines are recorded, never a password:
the enable password is typed at a ``Password:`` prompt and is not a command.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Events kept per device; the counters are exact whatever the cap drops.
MAX_EVENTS = 10_000


@dataclass(frozen=True)
class Faults:
    """A device's ``custom.labq.sim`` knobs, compiled (validated by labq.devices.testbed_yaml)."""

    latency: float = 0.0
    slow_chars: float = 0.0
    hang: re.Pattern[str] | None = None
    disconnect_on: re.Pattern[str] | None = None
    auth_fail: bool = False
    unreachable: bool = False

    @classmethod
    def from_sim(cls, sim: Mapping[str, Any]) -> Faults:
        def pattern(key: str) -> re.Pattern[str] | None:
            value = sim.get(key)
            return re.compile(value) if value else None

        return cls(
            latency=float(sim.get("latency", 0.0)),
            slow_chars=float(sim.get("slow_chars", 0.0)),
            hang=pattern("hang"),
            disconnect_on=pattern("disconnect_on"),
            auth_fail=bool(sim.get("auth_fail", False)),
            unreachable=bool(sim.get("unreachable", False)),
        )


class SessionLog:
    """Session events and concurrency counters of one simulated device."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.sessions = 0  # open right now
        self.peak = 0  # most open at once since the last reset
        self.opened = 0  # opened since the last reset
        self._next_id = 0
        self._next_link = 0

    def open(self, user: str) -> int:
        """A CLI session started; returns its id (unique per device)."""
        self._next_id += 1
        self.sessions += 1
        self.opened += 1
        self.peak = max(self.peak, self.sessions)
        self.record("open", self._next_id, user=user)
        return self._next_id

    def link_up(self) -> int:
        """A client connected (before its login): the device is busy from here."""
        self._next_link += 1
        self.record("link_up", link=self._next_link)
        return self._next_link

    def link_down(self, link: int) -> None:
        self.record("link_down", link=link)

    def close(self, session: int, reason: str = "closed") -> None:
        self.sessions -= 1
        self.record("close", session, reason=reason)

    def record(self, event: str, session: int | None = None, **fields: Any) -> None:
        entry: dict[str, Any] = {"t": round(time.time(), 6), "event": event}
        if session is not None:
            entry["session"] = session
        entry.update(fields)
        self.events.append(entry)

    def reset(self) -> None:
        """Forget events and the peak; sessions still open stay counted."""
        self.events.clear()
        self.peak = self.sessions
        self.opened = 0

    def snapshot(self, events: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"sessions": self.sessions, "peak": self.peak,
                               "opened": self.opened}
        if events:
            out["events"] = list(self.events)
        return out
