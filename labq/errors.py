"""Every error labq raises, under one root: :class:`LabqError`.

::

    LabqError
    ├── ConfigError             a setting, config file or option has a bad value
    ├── BrokerUnavailable       Redis cannot be reached
    │   └── PartialSubmit       a batch submit lost Redis part way (a SubmitError too)
    ├── StackError              a part of the embedded stack did not start
    │   └── SimLabError         the simulated lab did not start or answer
    ├── TimeLimitError          soft/hard limits that cannot work
    ├── TestbedError            a testbed file or object is invalid
    ├── DeviceError             about one device (``device``, ``address``)
    │   ├── DeviceUnreachable   no connection to the device
    │   ├── AuthenticationFailed  the device refused the credentials
    │   ├── DeviceDisconnected  the device closed the connection mid-command
    │   ├── CommandTimeout      no prompt came back within the read timeout
    │   ├── DeviceBusy          the lease timeout passed while waiting
    │   ├── DeviceUnavailable   the device is bad, in maintenance or retired
    │   ├── UnknownDevice       no such device in the testbed
    │   ├── DriverError         no usable driver or connection
    │   └── LeaseError          a malformed lease request
    ├── SubmitError             a call could not be queued
    │   ├── PartialSubmit
    │   └── DeviceSelectionError  roles, Picks or devices no one segment serves
    ├── TaskCancelled           raised in a task whose run was cancelled
    ├── SoftTimeout             raised in a device task at its soft limit
    ├── UnknownRun              no run, or more than one, has that id (prefix)
    ├── ReservationError        a reservation refused: busy (--no-wait), none, not your token
    └── RunError                what a run raises to the testscript (``outcomes``)
        ├── TaskFailed          a pcall call failed
        └── RunTimeout          a run or pcall reached its timeout

    RunInterrupted              not an error: a run stopped by Ctrl-C or SIGTERM
                                (a SystemExit and a KeyboardInterrupt)

Each class says when it is raised. Messages carry the offending value, so a
log line alone tells what was wrong. Errors from redis, kombu and celery are
wrapped at the boundary with ``raise ... from``. Stored results name this
module (``exc_module``), so it stays ``labq.errors``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labq.outcome import Outcome


class LabqError(Exception):
    """Root of every error labq raises on purpose."""


class ConfigError(LabqError):
    """A setting, a config file or a command-line option has a bad value.

    Raised while settings are read, and when an app or worker is built with a
    configuration labq refuses (a pool without time limits, for example).
    """

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        super().__init__(f"{setting}={value!r}: {reason}")


class BrokerUnavailable(LabqError):
    """Redis (the broker or the result backend) cannot be reached.

    The message names the address with its password masked.
    """


class StackError(LabqError):
    """A part of the embedded stack (Redis, a worker, Flower) failed to start
    or to become ready in time."""


class TimeLimitError(LabqError):
    """A soft or hard time limit is invalid: not positive, the soft limit at
    or above the hard one, or a hard limit above ``max_time_limit`` (which the
    broker's visibility timeout is derived from)."""


class TestbedError(LabqError):
    """A testbed file (or a pyATS testbed object) is invalid: bad YAML, a
    missing or unknown key, a value of the wrong type, or an unset
    ``%ENV{VAR}``.

    The message names the file, the device and the bad key or value, as in
    ``config/testbed.yaml: device 'r3': custom.labq.max_sessions='two': must
    be a positive integer``. A password's value is never shown.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, source: str, reason: str, device: str | None = None,
                 key: str | None = None) -> None:
        self.source = source
        self.reason = reason
        self.device = device
        #: The dotted key, with ``=value`` appended when the value is shown.
        self.key = key
        # args, not the message: the JSON result backend rebuilds cls(*args).
        super().__init__(source, reason, device, key)

    def __str__(self) -> str:
        where = [self.source]
        if self.device is not None:
            where.append(f"device {self.device!r}")
        if self.key is not None:
            where.append(self.key)
        return f"{': '.join(where)}: {self.reason}"


class SimLabError(StackError):
    """The simulated lab failed to start or to become ready in time, or its
    control endpoint cannot be reached. The message names the testbed or the
    control URL."""


class DeviceError(LabqError):
    """Base of the errors about one device; carries ``device`` and ``address``
    (empty where unknown).

    The single positional argument is the message, so Celery's JSON result
    encoding rebuilds these errors on the client unchanged. Subclasses with
    other arguments (:class:`DeviceBusy`, :class:`UnknownDevice`) keep them
    as their ``args`` for the same reason.
    """

    def __init__(self, message: str, *, device: str = "", address: str = "") -> None:
        super().__init__(message)
        self.device = device
        self.address = address


class DeviceBusy(DeviceError):
    """A device task waited for its device's lease longer than its lease
    timeout. The message names the device, how long the task waited and who
    held the device at the end (task ids)."""

    def __init__(self, device: str, waited: float, holders: list[str]) -> None:
        self.device = device
        self.waited = waited
        self.holders = list(holders)
        self.address = ""
        # args, not the message: Celery's JSON result backend rebuilds the
        # exception as cls(*args), so this round-trips.
        LabqError.__init__(self, device, waited, self.holders)

    def __str__(self) -> str:
        held_by = ", ".join(self.holders) or "nobody (queued behind earlier waiters)"
        return (f"device {self.device!r} still busy after waiting {self.waited:.1f} s; "
                f"held by {held_by}")


class DeviceUnavailable(DeviceError):
    """A task's device is ``bad``, in ``maintenance`` or ``retired``
    (labq.devices.health): the task fails at once, before any lease or
    connection. The message names the device, its state, since when, by whom
    and why (:meth:`naming`); ``state``, ``reason``, ``since`` and ``by``
    carry the same where the error is raised."""

    def __init__(self, message: str, *, device: str = "", state: str = "", reason: str = "",
                 since: float = 0.0, by: str = "") -> None:
        super().__init__(message, device=device)
        self.state = state
        self.reason = reason
        self.since = since
        self.by = by

    @classmethod
    def naming(cls, device: str, state: str, reason: str = "", since: float = 0.0,
               by: str = "") -> DeviceUnavailable:
        when = (time.strftime(" since %Y-%m-%d %H:%M UTC", time.gmtime(since))
                if since else "")
        who = f" by {by}" if by else ""
        why = f": {reason}" if reason else ""
        return cls(f"device {device!r} is unavailable: {state}{when}{who}{why}; "
                   f"'labq resume {device}' puts it back", device=device, state=state,
                   reason=reason, since=since, by=by)


class UnknownDevice(DeviceError):
    """A device name is not in the testbed; raised at submit time, before
    anything is queued, and on a worker whose testbed lacks the device.

    The message lists the closest names the testbed does have.
    """

    def __init__(self, name: str, testbed: str, close_matches: list[str]) -> None:
        self.name = name
        self.device = name
        self.address = ""
        self.testbed = testbed
        self.close_matches = list(close_matches)
        LabqError.__init__(self, name, testbed, self.close_matches)

    def __str__(self) -> str:
        hint = (f"; did you mean {', '.join(map(repr, self.close_matches))}?"
                if self.close_matches else "; no device has a similar name")
        return f"unknown device {self.name!r} in testbed {self.testbed!r}{hint}"


class DriverError(DeviceError):
    """A device names no usable driver or connection, or the driver is not
    installed (unicon without the ``pyats`` extra)."""


class LeaseError(DeviceError):
    """A device lease request is malformed: an empty device or holder name, a
    device name ending in a reserved key suffix (``:info``, ``:seen``),
    ``max_sessions`` below 1, or a TTL that is not positive.

    Raised by :class:`labq.devices.lease.Leases` before anything is sent to Redis.
    """


class DeviceUnreachable(DeviceError):
    """The worker could not open a connection to the device: refused, timed
    out or dropped while logging in. Names the device and the address."""

    @classmethod
    def at(cls, device: str, address: str, reason: str = "") -> DeviceUnreachable:
        detail = f": {reason}" if reason else ""
        return cls(f"device {device!r} at {address} is unreachable{detail}",
                   device=device, address=address)


class AuthenticationFailed(DeviceError):
    """The device refused the credentials from the testbed. Names the device
    and the address, never the credentials."""

    @classmethod
    def at(cls, device: str, address: str) -> AuthenticationFailed:
        return cls(f"device {device!r} at {address} refused the login credentials",
                   device=device, address=address)


class DeviceDisconnected(DeviceError):
    """The device closed the connection while a command ran. Raised as soon
    as the channel is seen closed, not at a read timeout; names the device,
    the address, the command and how long it had run."""

    @classmethod
    def during(cls, device: str, address: str, command: str, elapsed: float,
               chars: int) -> DeviceDisconnected:
        return cls(f"device {device!r} at {address} closed the connection during "
                   f"{command!r} after {elapsed:.1f} s ({chars} chars of output had arrived)",
                   device=device, address=address)


class CommandTimeout(DeviceError):
    """A command's output did not end in the device's prompt within the read
    timeout (``execute(..., timeout=)``). Names the device, the command, the
    timeout and the end of what arrived."""

    @classmethod
    def during(cls, device: str, address: str, command: str, limit: float,
               arrived: str) -> CommandTimeout:
        return cls(f"device {device!r} at {address} sent no prompt within {limit:g} s of "
                   f"{command!r}; {len(arrived)} chars arrived, ending {arrived[-40:]!r}",
                   device=device, address=address)


class TaskCancelled(LabqError):
    """Raised inside a task whose run was cancelled: before it starts (the
    durable cancel flag in Redis) or when the cancel interrupts it."""


class SoftTimeout(LabqError):
    """A device task reached its soft time limit. Raised in the task after the
    session was dropped; ``partial`` maps each command that completed to its
    output, so the outcome keeps what was gathered before the interrupt."""

    def __init__(self, message: str, partial: dict[str, str] | None = None) -> None:
        self.partial = dict(partial or {})
        # args, not just the message: the JSON result carries the partial output.
        super().__init__(message, self.partial)

    @classmethod
    def on(cls, device: str, partial: dict[str, str],
           cut_short: str | None = None) -> SoftTimeout:
        """The soft timeout of a task on ``device``; ``cut_short`` names the
        command that was running, whose output in ``partial`` is only what had
        arrived."""
        message = f"soft time limit reached on {device!r}"
        if cut_short is not None:
            message += (f" during {cut_short!r} ({len(partial.get(cut_short, ''))} chars "
                        "of its output had arrived)")
        return cls(message, partial)

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        # Flower and the worker log show repr(): the message, not the partial output.
        return f"SoftTimeout({self.args[0]!r})"


class SubmitError(LabqError):
    """A task could not be submitted: an argument that is not JSON, a task
    name no module under ``tasks/`` registers, or a run that is closed.
    Nothing was queued for that call."""


class DeviceSelectionError(SubmitError):
    """A device task's devices cannot be chosen: a role without an argument,
    a :class:`labq.Pick` that matches no device (the message names the labels
    and the values that exist), more Picks of one pool than it has members,
    or devices that span lab segments (named, with their queues). Raised at
    submit time, before anything is queued."""


class PartialSubmit(SubmitError, BrokerUnavailable):
    """A batch submit (:meth:`labq.Run.submit_many`) lost Redis part way.

    Every item was validated before anything was published, so this only
    follows a broker failure. ``queued`` are the task ids whose pipeline
    Redis executed (the run tracks them), ``uncertain`` those of the pipeline
    that failed (Redis may or may not have queued them), ``unsent`` the rest.
    """

    def __init__(self, message: str, queued: Sequence[str], uncertain: Sequence[str],
                 unsent: Sequence[str]) -> None:
        super().__init__(message)
        self.queued = list(queued)
        self.uncertain = list(uncertain)
        self.unsent = list(unsent)


class UnknownRun(LabqError):
    """``labq cancel`` (or another lookup by run id) found no run whose id
    starts with the given text, or more than one. The message names the
    text and the candidates."""


class ReservationError(LabqError):
    """A person's reservation could not be made, released or extended: the
    device is busy and ``--no-wait`` was given, it holds no reservation, or
    the token given is not the reservation's (``--force`` overrides). Names
    the device, the reservation and its owner."""


class RunError(LabqError):
    """Base of the errors a run raises to the testscript. ``outcomes`` holds
    every outcome gathered so far, in call order where the run knows it."""

    def __init__(self, message: str, outcomes: Sequence[Outcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


class TaskFailed(RunError):
    """A call of :func:`labq.pcall` failed on its worker. ``outcome`` is the
    failed one; ``error`` its remote error (type name, message, traceback)."""

    def __init__(self, outcome: Outcome, outcomes: Sequence[Outcome] = ()) -> None:
        err = outcome.error
        what = f"{err.type}: {err.message}" if err else outcome.status.value
        where = f" on {outcome.device!r}" if outcome.device else ""
        super().__init__(f"{outcome.task}{where} {outcome.status.value}: {what}", outcomes)
        self.outcome = outcome
        self.error = err


class RunTimeout(RunError):
    """A run or :func:`labq.pcall` reached its timeout. What still ran was
    cancelled; ``outcomes`` holds what finished and the cancelled rest."""


class RunInterrupted(SystemExit, KeyboardInterrupt):
    """A run (or :func:`labq.pcall`) stopped by Ctrl-C or SIGTERM, after it
    cancelled its tasks and printed what finished.

    Not under :class:`LabqError` on purpose: ``except Exception`` must not
    swallow a Ctrl-C. As a ``SystemExit`` it ends a testscript with
    ``code`` (130 for Ctrl-C, 143 for SIGTERM) and no traceback; as a
    ``KeyboardInterrupt`` it still stops pytest and any ``except
    KeyboardInterrupt`` around the run. ``outcomes`` holds every outcome.
    """

    def __init__(self, code: int, outcomes: Sequence[Outcome] = ()) -> None:
        super().__init__(code)
        self.outcomes = list(outcomes)
