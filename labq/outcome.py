"""What a testscript learns about each task: :class:`Outcome` and :class:`Status`.

Outcomes are built from the raw JSON that Celery's Redis result backend
stores. Nothing is unpickled and no remote exception class is imported: a
failure is described by its type name, message and traceback text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any


class Status(str, enum.Enum):
    """Where a task is; the last six are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SOFT_TIMEOUT = "soft_timeout"
    HARD_TIMEOUT = "hard_timeout"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def final(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RemoteError:
    """A failure on the worker, as text: never an unpickled exception."""

    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True)
class Outcome:
    """One submitted task: where it ran, when, and how it ended."""

    task_id: str
    task: str
    device: str | None
    status: Status
    value: Any = None
    error: RemoteError | None = None
    worker: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: ``worker@host/N``: the prefork child that ran it, for timelines.
    slot: str | None = None
    #: Role -> device, once a task with Picks or several roles has started
    #: (``{"dut": "r1", "peer": "r14"}``); ``device`` is the first role's.
    devices: dict[str, str] | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, when both are known."""
        if self.started_at and self.finished_at:
            return max(0.0, (self.finished_at - self.started_at).total_seconds())
        return None

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCEEDED

    def with_status(self, status: Status, **changes: Any) -> Outcome:
        return replace(self, status=status, **changes)


# Exception type names that decide the final status, whatever the module.
_SOFT = {"SoftTimeLimitExceeded", "SoftTimeout"}
_HARD = {"TimeLimitExceeded"}
_CANCELLED = {"TaskCancelled", "TaskRevokedError", "Terminated"}
_LOST = {"WorkerLostError"}
#: Errors whose first argument is the whole message and the rest data.
_MESSAGE_FIRST = {"SoftTimeout"}


def status_of(meta: dict[str, Any]) -> Status:
    """Map Celery's stored state (and exception type) to a :class:`Status`."""
    state = meta.get("status")
    if state == "SUCCESS":
        return Status.SUCCEEDED
    if state == "STARTED":
        return Status.RUNNING
    if state == "REVOKED":
        return Status.CANCELLED
    if state == "FAILURE":
        exc_type = (meta.get("result") or {}).get("exc_type", "")
        if exc_type in _SOFT:
            return Status.SOFT_TIMEOUT
        if exc_type in _HARD:
            return Status.HARD_TIMEOUT
        if exc_type in _CANCELLED:
            return Status.CANCELLED
        if exc_type in _LOST:
            return Status.LOST
        return Status.FAILED
    return Status.QUEUED  # PENDING, RECEIVED, RETRY (waiting for its device)


def error_of(meta: dict[str, Any]) -> RemoteError | None:
    if meta.get("status") not in ("FAILURE", "REVOKED"):
        return None
    result = meta.get("result")
    if isinstance(result, dict) and "exc_type" in result:
        msg = result.get("exc_message")
        if isinstance(msg, (list, tuple)) and msg and result["exc_type"] in _MESSAGE_FIRST:
            msg = str(msg[0])  # the rest is data (a soft timeout's partial output)
        elif isinstance(msg, (list, tuple)):
            msg = " ".join(str(m) for m in msg) if len(msg) != 1 else str(msg[0])
        return RemoteError(str(result["exc_type"]), str(msg or ""), meta.get("traceback") or "")
    return RemoteError("Revoked" if meta.get("status") == "REVOKED" else "Error", str(result))


def parse_time(value: Any) -> datetime | None:
    """A UTC datetime from an ISO string or epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def outcome_from_meta(base: Outcome, meta: dict[str, Any] | None,
                      start: dict[str, Any] | None) -> Outcome:
    """``base`` (what the client knows) updated with the stored result and start record."""
    changes: dict[str, Any] = {}
    if start:
        changes["started_at"] = parse_time(start.get("at"))
        changes["worker"] = start.get("worker") or None
        changes["slot"] = start.get("slot") or None
        devices = start.get("devices")
        if isinstance(devices, dict) and devices:
            changes["devices"] = {str(k): str(v) for k, v in devices.items()}
            changes["device"] = str(next(iter(devices.values())))
    if not meta:
        status = Status.RUNNING if start else base.status
        return replace(base, status=status, **changes)
    status = status_of(meta)
    if status is Status.QUEUED and start:
        status = Status.RUNNING
    elif status is Status.RUNNING and not start:
        # A labq task writes STARTED with its start record; one that parked
        # for its devices has dropped the record before its RETRY is stored.
        status = Status.QUEUED
    changes["status"] = status
    if status.final:
        changes["finished_at"] = parse_time(meta.get("date_done"))
        changes["worker"] = meta.get("worker") or changes.get("worker") or base.worker
        error = error_of(meta)
        changes["error"] = error
        if status is Status.SUCCEEDED:
            changes["value"] = meta.get("result")
        elif status is Status.SOFT_TIMEOUT:
            changes["value"] = _partial(meta)
    return replace(base, **changes)


def _partial(meta: dict[str, Any]) -> Any:
    # labq's SoftTimeout carries the output gathered before the interrupt.
    msg = (meta.get("result") or {}).get("exc_message")
    if isinstance(msg, (list, tuple)) and len(msg) > 1:
        return msg[1]
    return None
