"""The driver-neutral session and the choice of driver for a device.

Each driver module registers its :class:`Session` class under its name
(:func:`register`) when it is imported; :mod:`labq.devices.drivers` imports
them all, so this module needs none of them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from labq.errors import DriverError

if TYPE_CHECKING:
    from labq.devices.drivers.reader import CommandRead
    from labq.devices.testbed import Connection, Device


SessionT = TypeVar("SessionT", bound="type[Session]")

#: Driver name -> its session class, filled by :func:`register`.
_DRIVERS: dict[str, type[Session]] = {}


def register(name: str) -> Callable[[SessionT], SessionT]:
    """Register a :class:`Session` class as the driver ``name``."""

    def add(cls: SessionT) -> SessionT:
        cls.driver = name
        _DRIVERS[name] = cls
        return cls

    return add


def drivers() -> tuple[str, ...]:
    """The names of the registered drivers."""
    return tuple(sorted(_DRIVERS))


class Session(abc.ABC):
    """An open connection to one device, the same on every driver."""

    driver: str = ""

    @classmethod
    @abc.abstractmethod
    def connect(cls, device: Device, connection: Connection, timeout: float) -> Session:
        """Open a session to ``device`` over ``connection`` within ``timeout`` s."""

    def __init__(self, device: Device, connection: Connection, conn: Any) -> None:
        self.device = device
        self.connection = connection
        self._conn = conn
        self.closed = False
        #: (command, output) of every command that completed, in order.
        self.transcript: list[tuple[str, str]] = []
        #: The command being read, with what has arrived (drivers that read
        #: the channel themselves set it).
        self.pending: CommandRead | None = None
        #: The device's prompt, once the driver has learned it.
        self.prompt = ""

    def gathered(self) -> dict[str, str]:
        """Each completed command's output, then what arrived of the one in
        flight, if any: what a soft timeout keeps."""
        out = dict(self.transcript)
        if self.pending is not None:
            out[self.pending.command] = self.pending.output
        return out

    @property
    def native(self) -> Any:
        """The driver's own connection object, for what the session lacks."""
        return self._conn

    @abc.abstractmethod
    def execute(self, command: str, timeout: float | None = None) -> str:
        """Run one command and return its output, without the prompt."""

    @abc.abstractmethod
    def configure(self, lines: Sequence[str]) -> str:
        """Enter configuration mode, apply ``lines``, leave it; return the transcript."""

    def close(self) -> None:
        """Disconnect gracefully, bounded in time; a no-op once closed."""
        if not self.closed:
            self.closed = True
            self._disconnect()

    def abort(self) -> None:
        """Drop the connection at once, after a timeout left it in an unknown state."""
        if not self.closed:
            self.closed = True
            self._drop()

    def _disconnect(self) -> None:
        # Both drivers name it disconnect(); a session that cannot say goodbye
        # is dropped instead.
        try:
            self._conn.disconnect()
        except Exception:
            self._drop()

    @abc.abstractmethod
    def _drop(self) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device.name} via {self.connection.name}>"


def choose_driver(device: Device) -> tuple[str, Connection]:
    """The driver name and connection to use for ``device``."""
    if not device.connections:
        raise DriverError(f"device {device.name!r} has no connections")
    conn = device.connection
    if device.driver or conn.driver:
        return str(device.driver or conn.driver), conn
    if conn.command or (device.connection_class or "").startswith("unicon"):
        return "unicon", conn
    return "netmiko", conn


def open_session(device: Device, connect_timeout: float = 10.0) -> Session:
    """Connect to ``device`` with its driver.

    Raises :class:`~labq.errors.DeviceUnreachable` or
    :class:`~labq.errors.AuthenticationFailed` naming the device and address.
    """
    driver, conn = choose_driver(device)
    session_cls = _DRIVERS.get(driver)
    if session_cls is None:
        known = " or ".join(sorted(_DRIVERS))
        raise DriverError(f"device {device.name!r}: unknown driver {driver!r}; use {known}")
    return session_cls.connect(device, conn, connect_timeout)
