"""The device inventory: a pyATS testbed (YAML file or object) as frozen dataclasses.

The YAML is pyATS's own format (``testbed:``, ``devices:``, ``connections:``,
``credentials:``, ``%ENV{VAR}``), so one file serves pyATS and labq. labq's
own keys live under each device's ``custom: labq:``: ``queue``,
``max_sessions``, ``driver`` and ``sim`` (the simulated lab's fault knobs).
pyATS keys labq does not use pass through unchecked; labq's keys are checked
strictly, because a typo there silently changes routing or leasing.

Credentials are read here, on the host that loads the file, and are masked in
every ``repr``: they never belong in a message, a result or a log. The parsing
and validation live in :mod:`labq.testbed_yaml`.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labq.errors import TestbedError, UnknownDevice

DRIVERS = ("netmiko", "unicon")
PROTOCOLS = {"ssh": 22, "telnet": 23}  # protocol -> default port
LABQ_KEYS = ("queue", "max_sessions", "driver", "sim")
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
# libyaml's safe loader is ~10x faster: a 1,000-device lab loads in a blink.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def load_testbed(path: Path | str) -> Testbed:
    """Read and validate a pyATS testbed YAML file; errors are :class:`TestbedError`."""
    from labq.testbed_yaml import build_testbed  # imported here: it imports this module

    p = Path(path)
    source = str(p)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise TestbedError(source, "no such testbed file") from None
    except OSError as exc:
        raise TestbedError(source, f"cannot read the testbed: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_LOADER)  # a safe loader (libyaml when present)
    except yaml.YAMLError as exc:
        # Only the problem and its position: the offending line may hold a password.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise TestbedError(source, f"not valid YAML{at}: {problem}") from None
    return build_testbed(data, source, p, default_name=p.stem)


def from_pyats(tb: Any) -> Testbed:
    """Convert a ``pyats.topology.Testbed`` (duck-typed: ``.name``, ``.devices``
    whose values have ``.os``, ``.type``, ``.connections``, ``.credentials``,
    ``.custom``) with the same validation as a file."""
    from labq.testbed_yaml import build_testbed  # imported here: it imports this module

    name = str(getattr(tb, "name", None) or "testbed")
    file = getattr(tb, "testbed_file", None)
    path = Path(file) if isinstance(file, (str, Path)) else None
    source = str(path) if path else f"pyATS testbed {name!r}"
    devices = getattr(tb, "devices", None)
    items = devices.items() if isinstance(devices, Mapping) else (
        (getattr(d, "name", None), d) for d in devices or ())
    raw_devices: dict[Any, Any] = {}
    for dev_name, dev in items:
        raw: dict[str, Any] = {}
        for attr in ("os", "type", "platform", "connections", "credentials", "custom"):
            value = getattr(dev, attr, None)
            if value is not None and value != {}:
                raw[attr] = _plain(value)
        raw_devices[dev_name] = raw
    top: dict[str, Any] = {"name": name}
    if getattr(tb, "credentials", None):
        top["credentials"] = _plain(tb.credentials)
    return build_testbed({"testbed": top, "devices": raw_devices}, source, path, default_name=name)


def as_testbed(testbed: Testbed | Path | str | Any) -> Testbed:
    """A :class:`Testbed` from a Testbed, a file path, or a pyATS Testbed object."""
    if isinstance(testbed, Testbed):
        return testbed
    if isinstance(testbed, (str, Path)):
        return load_testbed(testbed)
    return from_pyats(testbed)


def _plain(value: Any) -> Any:
    """pyATS objects as plain YAML-like data (AttrDicts, SecretStrings, IP objects)."""
    if type(value).__name__ == "SecretString":  # pyATS: str() would be masked
        return str(value.plaintext)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping) or callable(getattr(value, "items", None)):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if hasattr(value, "__dict__"):
        return {str(k): _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)
