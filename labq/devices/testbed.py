"""The device inventory: a pyATS testbed as frozen dataclasses.

The YAML is pyATS's own format (``testbed:``, ``devices:``, ``connections:``,
``credentials:``, ``%ENV{VAR}``), so one file serves pyATS and labq. labq's
own keys live under each device's ``custom: labq:``: ``queue``,
``max_sessions``, ``driver``, ``labels`` (what :class:`labq.Pick` selects
by) and ``sim`` (the simulated lab's fault knobs).
pyATS keys labq does not use pass through unchecked; labq's keys are checked
strictly, because a typo there silently changes routing or leasing.

Credentials are read here, on the host that loads the file, and are masked in
every ``repr``: they never belong in a message, a result or a log. Reading a
file or a pyATS object into these types, with the validation, is
:mod:`labq.devices.testbed_yaml`'s.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labq.errors import UnknownDevice

DRIVERS = ("netmiko", "unicon")
PROTOCOLS = {"ssh": 22, "telnet": 23}  # protocol -> default port
LABQ_KEYS = ("queue", "max_sessions", "driver", "sim", "labels")
#: Labels every device has, from its own testbed keys.
BUILTIN_LABELS = ("os", "type", "platform")
#: The simulated lab's fault knobs and the kind of value each takes.
SIM_KEYS = {
    "latency": "seconds",  # added before each command's output
    "slow_chars": "seconds",  # per character of output
    "hang": "regex",  # a matching command never answers
    "disconnect_on": "regex",  # a matching command drops the connection
    "auth_fail": "bool",  # every login is refused
    "unreachable": "bool",  # no listener: the port is closed
}
TOP_LEVEL_KEYS = ("testbed", "devices", "topology")


@dataclass(frozen=True, repr=False)
class Credentials:
    """Login credentials of one device; ``repr`` and ``str`` mask the passwords."""

    username: str
    password: str
    enable_password: str | None = None

    def __repr__(self) -> str:
        enable = "None" if self.enable_password is None else "'****'"
        return f"Credentials(username={self.username!r}, password='****', enable_password={enable})"

    __str__ = __repr__


@dataclass(frozen=True)
class Connection:
    """One entry of a device's ``connections:``: an ssh/telnet address or a command."""

    name: str
    protocol: str | None  # "ssh" or "telnet"; None for a command connection
    ip: str | None
    port: int | None
    command: str | None
    #: Per-connection driver hint ("netmiko" or "unicon"), if the testbed gives one.
    driver: str | None = None

    @property
    def address(self) -> str:
        """``ip:port`` (``[ip]:port`` for IPv6), or the command that spawns the CLI."""
        if self.command is not None:
            return self.command
        host = f"[{self.ip}]" if self.ip and ":" in self.ip else str(self.ip)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Device:
    """One lab device: where it is, which queue serves it, and how to log in."""

    name: str
    os: str
    type: str
    #: The queue (lab segment) whose workers can reach it; None means the default queue.
    queue: str | None
    max_sessions: int
    connections: dict[str, Connection]
    credentials: Credentials | None
    #: Validated fault knobs for the simulated lab (keys from SIM_KEYS).
    sim: dict[str, Any]
    #: ``custom.labq.driver``, if set; the drivers module picks otherwise.
    driver: str | None
    platform: str | None = None
    #: ``connections.defaults.via``: the connection to use by default.
    via: str | None = None
    #: ``connections.defaults.class``, e.g. ``unicon.Unicon``.
    connection_class: str | None = None
    #: ``custom.labq.labels``: what a :class:`labq.Pick` selects by, with
    #: :attr:`all_labels` adding ``os``, ``type`` and ``platform``.
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def all_labels(self) -> dict[str, str]:
        """The device's labels: ``os``, ``type``, ``platform`` (when set) and its own."""
        own = {"os": self.os, "type": self.type}
        if self.platform:
            own["platform"] = self.platform
        return {**own, **self.labels}

    @property
    def connection(self) -> Connection:
        """The default connection: ``defaults.via``, else the first ssh one, else the first."""
        if self.via is not None:
            return self.connections[self.via]
        ssh = [c for c in self.connections.values() if c.protocol == "ssh"]
        return ssh[0] if ssh else next(iter(self.connections.values()))

    @property
    def address(self) -> str:
        """The default connection's ``ip:port``, or its command."""
        return self.connection.address

    @property
    def ip(self) -> str | None:
        """The default connection's IP address (None for a command connection)."""
        return self.connection.ip


@dataclass(frozen=True)
class Testbed:
    """A named set of devices, loaded from ``source`` (None for a pyATS object)."""

    __test__ = False  # not a pytest test class, whatever its name says

    name: str
    devices: dict[str, Device]
    source: Path | None = None

    def device(self, name: str) -> Device:
        """The device called ``name``; :class:`UnknownDevice` lists close matches."""
        try:
            return self.devices[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self.devices), n=3)
            raise UnknownDevice(str(name), self.name, close) from None

    def queue_for(self, name: str, default_queue: str) -> str:
        """The queue that serves device ``name``, or ``default_queue`` when it names none."""
        return self.device(name).queue or default_queue

    def __contains__(self, name: object) -> bool:
        return name in self.devices

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices.values())

    def __len__(self) -> int:
        return len(self.devices)
