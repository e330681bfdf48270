"""unicon, for pyATS labs: installed with the ``pyats`` extra.

unicon spawns a child process per connection (ssh, telnet or a command), and
a session that timed out is left in an unknown state: it is destroyed, not
reused. The disconnect waits are lowered from unicon's 10 s defaults.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from labq.devices.drivers.base import Session, register
from labq.errors import AuthenticationFailed, DeviceUnreachable, DriverError

if TYPE_CHECKING:
    from labq.devices.testbed import Connection, Device

DEFAULT_TIMEOUT = 60.0


@register("unicon")
class UniconSession(Session):

    @classmethod
    def connect(cls, device: Device, connection: Connection, timeout: float) -> UniconSession:
        try:
            from unicon import Connection as UniconConnection
        except ImportError as exc:
            raise DriverError(
                f"device {device.name!r} uses unicon, which is not installed: "
                "pip install 'labq[pyats]'") from exc
        creds = device.credentials
        credentials: dict[str, dict[str, str]] = {}
        if creds is not None:
            credentials["default"] = {"username": creds.username, "password": creds.password}
            if creds.enable_password:
                credentials["enable"] = {"password": creds.enable_password}
        if connection.command:
            start = [connection.command]
        else:
            start = [f"{connection.protocol or 'ssh'} -p {connection.port or 22} "
                     f"{'-l ' + creds.username + ' ' if creds else ''}{connection.ip}"]
        conn = UniconConnection(
            hostname=device.name, start=start, os=device.os, platform=device.platform,
            credentials=credentials, log_stdout=False, learn_hostname=False,
            init_exec_commands=[], init_config_commands=[], connection_timeout=timeout,
        )
        conn.settings.POST_DISCONNECT_WAIT_SEC = 0
        conn.settings.GRACEFUL_DISCONNECT_WAIT_SEC = 0.2
        try:
            conn.connect()
        except Exception as exc:  # unicon raises its own ConnectionError, or others
            _kill(conn)
            _reraise_soft_limit(exc)
            if _refused_login(exc):
                raise AuthenticationFailed.at(device.name, connection.address) from exc
            raise DeviceUnreachable.at(device.name, connection.address,
                                       type(exc).__name__) from exc
        return cls(device, connection, conn)

    def execute(self, command: str, timeout: float | None = None) -> str:
        try:
            output = str(self._conn.execute(command, timeout=timeout or DEFAULT_TIMEOUT))
        except Exception as exc:
            # A timed-out unicon session stays unusable: destroy it.
            self.abort()
            _reraise_soft_limit(exc)
            raise
        self.transcript.append((command, output))
        return output

    def configure(self, lines: Sequence[str]) -> str:
        try:
            return str(self._conn.configure(list(lines)))
        except Exception as exc:
            self.abort()
            _reraise_soft_limit(exc)
            raise

    def _drop(self) -> None:
        _kill(self._conn)


#: unicon's errors for a refused login or enable password.
_AUTH_ERRORS = ("CredentialsExhaustedError", "UniconAuthenticationError")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and exceptions given as their arguments."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain + [a for e in chain for a in e.args if isinstance(a, BaseException)]


def _refused_login(exc: BaseException) -> bool:
    """Whether unicon failed because the device refused the credentials: by
    the error's type anywhere in its chain, never by words in a message."""
    try:
        from unicon.core import errors
    except ImportError:
        return False
    kinds = tuple(getattr(errors, name) for name in _AUTH_ERRORS if hasattr(errors, name))
    return any(isinstance(e, kinds) for e in _chain(exc))


def _reraise_soft_limit(exc: BaseException) -> None:
    """unicon wraps the soft limit in SubCommandFailure (as its cause or its
    argument): unwrap it, so the task sees the interrupt it was sent."""
    from celery.exceptions import SoftTimeLimitExceeded

    if any(isinstance(e, SoftTimeLimitExceeded) for e in _chain(exc)):
        raise SoftTimeLimitExceeded() from exc


def _kill(conn: Any) -> None:
    """Kill the process unicon spawned for the connection, and close its pty."""
    spawn = getattr(conn, "spawn", None)
    pid = getattr(spawn, "pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        if spawn is not None:
            spawn.close()
    except Exception:
        pass
