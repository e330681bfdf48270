"""netmiko over SSH: the default driver."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from labq.drivers.base import Session
from labq.errors import AuthenticationFailed, DeviceUnreachable

if TYPE_CHECKING:
    from labq.testbed import Connection, Device

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


class NetmikoSession(Session):
    driver = "netmiko"

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

    def _drop(self) -> None:
        # No "exit" to a device that may be stuck in a command: close the socket.
        for attr in ("remote_conn", "remote_conn_pre"):
            obj = getattr(self._conn, attr, None)
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
