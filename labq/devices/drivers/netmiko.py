"""netmiko over SSH: the default driver."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from labq.devices.drivers.base import Session, register
from labq.errors import AuthenticationFailed, DeviceUnreachable

if TYPE_CHECKING:
    from labq.devices.testbed import Connection, Device

# pyATS os names to netmiko device types.
DEVICE_TYPES = {
    "ios": "cisco_ios",
    "iosxe": "cisco_ios",
    "iosxr": "cisco_xr",
    "nxos": "cisco_nxos",
    "junos": "juniper_junos",
    "eos": "arista_eos",
    "linux": "linux",
}
DEFAULT_READ_TIMEOUT = 60.0
#: Longest wait, after "exit", for the device to close the session's
#: channel and connection from its side.
CLOSE_WAIT = 2.0
#: Longest wait for paramiko's own close after the socket was shut.
DROP_WAIT = 1.0

log = logging.getLogger(__name__)


@register("netmiko")
class NetmikoSession(Session):

    @classmethod
    def connect(cls, device: Device, connection: Connection, timeout: float) -> NetmikoSession:
        from celery.exceptions import SoftTimeLimitExceeded
        from netmiko import ConnectHandler
        from netmiko.exceptions import NetmikoAuthenticationException

        address = f"{connection.ip}:{connection.port}"
        creds = device.credentials
        params: dict[str, Any] = {
            "device_type": DEVICE_TYPES.get(device.os, device.os),
            "host": connection.ip,
            "port": connection.port or 22,
            "username": creds.username if creds else "",
            "password": creds.password if creds else "",
            "secret": (creds.enable_password or "") if creds else "",
            "conn_timeout": timeout,
            "auth_timeout": timeout,
            "banner_timeout": timeout,
            "fast_cli": True,
            # netmiko's own session log would hold the password prompts.
            "session_log": None,
        }
        # Built unconnected so that a failure half way (an interrupt, a drop)
        # still has a handle to close: a lost paramiko client keeps the
        # socket, and the device's session, open for as long as the process.
        conn = ConnectHandler(**params, auto_connect=False)
        session = cls(device, connection, conn)
        try:
            conn._open()
            if params["secret"] or not conn.check_enable_mode():
                conn.enable()
        except BaseException as exc:
            session.abort()
            if isinstance(exc, NetmikoAuthenticationException) or (
                    "Authentication" in type(exc).__name__):
                raise AuthenticationFailed.at(device.name, address) from exc
            if not isinstance(exc, Exception) or isinstance(exc, SoftTimeLimitExceeded):
                raise  # an interrupt or a kill is the task's business, not a device fault
            # paramiko raises bare SSHException on refused banners
            raise DeviceUnreachable.at(device.name, address,
                                       f"{type(exc).__name__}: {exc}") from exc
        return session

    def execute(self, command: str, timeout: float | None = None) -> str:
        output = str(self._conn.send_command(command, read_timeout=timeout or DEFAULT_READ_TIMEOUT))
        self.transcript.append((command, output))
        return output

    def configure(self, lines: Sequence[str]) -> str:
        return str(self._conn.send_config_set(list(lines)))

    def _disconnect(self) -> None:
        # Say goodbye, then wait for the device to close its end before the
        # socket goes: only then has the device let go of the session, and
        # only then may the lease pass on (a device with one free VTY line
        # refuses a session that arrives before its last one is gone).
        conn = self._conn
        try:
            conn.cleanup()  # leaves config mode and sends "exit"
        except Exception:
            pass
        client = getattr(conn, "remote_conn_pre", None)
        transport = client.get_transport() if client is not None else None
        if transport is not None and transport.is_active():
            deadline = time.monotonic() + CLOSE_WAIT
            chan = getattr(conn, "remote_conn", None)
            # The device closes the shell's channel after "exit" ...
            while chan is not None and not chan.closed and time.monotonic() < deadline:
                time.sleep(0.002)
            try:  # ... and the connection once it sees ours end.
                transport.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            while transport.is_active() and time.monotonic() < deadline:
                time.sleep(0.002)
        try:
            conn.paramiko_cleanup()
        except Exception:
            self._drop()
        finally:
            conn.remote_conn_pre = conn.remote_conn = None
            _forget_secrets(conn)

    def _drop(self) -> None:
        # No "exit" to a device that may be stuck in a command. The socket is
        # shut first, outside paramiko's locks: paramiko takes them with
        # acquire-then-try, so an interrupt landing in between leaves one held
        # and its close() would wait forever (past the hard limit).
        client = getattr(self._conn, "remote_conn_pre", None)
        transport = client.get_transport() if client is not None else None
        sock = getattr(transport, "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        closer = threading.Thread(target=self._close_objects, name="labq-drop", daemon=True)
        closer.start()
        closer.join(DROP_WAIT)
        if closer.is_alive():
            log.warning("paramiko's close of %s is stuck; left to a daemon thread",
                        self.device.name)

    def _close_objects(self) -> None:
        for attr in ("remote_conn", "remote_conn_pre"):
            obj = getattr(self._conn, attr, None)
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass


def _forget_secrets(conn: Any) -> None:
    """What netmiko's disconnect() does last: drop the connection's filter that
    masks its secrets in netmiko's log (one per connection would pile up)."""
    try:
        from netmiko import log

        log.removeFilter(conn._secrets_filter)
    except Exception:
        pass
