"""Device health: ``good``, ``unknown``, ``bad``, ``maintenance``, ``retired``.

Each device's state lives in Redis (``labq:health``, device -> state), with
its record (reason, since, by: a health check's task id or a person) in
``labq:health:records`` and its history in ``labq:health:{d}:log``. A device
never recorded is ``unknown``.

A ``bad``, ``maintenance`` or ``retired`` device takes no new work: the
lease scripts (labq.devices.lease_scripts) refuse a task's lease on it, and
a Pick's candidates skip it, so a task for it fails at once with
:class:`labq.errors.DeviceUnavailable`. Its current holders finish first.
A person's reservation may still take it (maintenance is what people do).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from labq.devices.lease import Leases
from labq.errors import ConfigError
from labq.keys import HEALTH_RECORDS_KEY, health_log_key


class Health(str, Enum):
    """A device's health state."""

    GOOD = "good"
    UNKNOWN = "unknown"
    BAD = "bad"
    MAINTENANCE = "maintenance"
    RETIRED = "retired"

    @property
    def blocks(self) -> bool:
        """Whether the device takes no new work in this state."""
        return self in BLOCKING

    @classmethod
    def parse(cls, value: str | Health) -> Health:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError("health", value,
                              f"expected one of {', '.join(h.value for h in cls)}") from None


#: The states in which a device takes no new work (the lease scripts list them too).
BLOCKING = frozenset({Health.BAD, Health.MAINTENANCE, Health.RETIRED})


@dataclass(frozen=True)
class HealthRecord:
    """A device's state, why, since when (epoch s) and set by whom."""

    device: str
    state: Health
    reason: str = ""
    since: float = 0.0
    by: str = ""

    def to_json(self) -> str:
        return json.dumps({"state": self.state.value, "reason": self.reason,
                           "since": self.since, "by": self.by})

    @classmethod
    def from_json(cls, device: str, raw: str | bytes | None) -> HealthRecord:
        if not raw:
            return cls(device, Health.UNKNOWN, "never checked")
        data = json.loads(raw)
        return cls(device, Health.parse(data.get("state", "unknown")), str(data.get("reason", "")),
                   float(data.get("since") or 0), str(data.get("by", "")))

    def describe(self) -> str:
        """``maintenance since 2026-12-08 04:40 UTC by ana: RMA``."""
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.since)) if self.since else ""
        parts = [self.state.value]
        if when:
            parts.append(f"since {when}")
        if self.by:
            parts.append(f"by {self.by}")
        return " ".join(parts) + (f": {self.reason}" if self.reason else "")


class HealthBook:
    """Reads and changes device health in Redis."""

    def __init__(self, client: redis.Redis, leases: Leases | None = None) -> None:
        self.client = client
        self.leases = leases or Leases(client)

    def get(self, devices: Iterable[str]) -> dict[str, HealthRecord]:
        """Each device's record (``unknown`` where none was written)."""
        names = list(dict.fromkeys(devices))
        if not names:
            return {}
        raws = self.client.hmget(HEALTH_RECORDS_KEY, names)
        return {n: HealthRecord.from_json(n, raw) for n, raw in zip(names, raws, strict=True)}

    def set(self, device: str, state: str | Health, *, reason: str, by: str) -> HealthRecord:
        """Give ``device`` the ``state``; its record, also added to its history."""
        record = HealthRecord(device, Health.parse(state), reason, time.time(), by)
        # A lease script: the parked waiters the change decides are woken
        # (to fail at once, or to run).
        self.leases.set_health(device, record.state.value, record.to_json())
        return record

    def history(self, device: str, count: int = 20) -> list[HealthRecord]:
        """The device's last ``count`` states, newest first."""
        entries: list[Any] = self.client.xrevrange(health_log_key(device), count=count) or []
        return [HealthRecord.from_json(device, (fields or {}).get(b"record"))
                for _, fields in entries]

    def blocked(self, devices: Iterable[str]) -> dict[str, HealthRecord]:
        """Of ``devices``, those that take no new work, with their records."""
        return {n: r for n, r in self.get(devices).items() if r.state.blocks}


