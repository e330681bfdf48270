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
        from netmiko import ConnectHandler
        from netmiko.exceptions import (
            NetmikoAuthenticationException,
            NetmikoTimeoutException,
        )

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
        try:
            conn = ConnectHandler(**params)
            if params["secret"] or not conn.check_enable_mode():
                conn.enable()
        except NetmikoAuthenticationException as exc:
            raise AuthenticationFailed.at(device.name, address) from exc
        except (TimeoutError, NetmikoTimeoutException, OSError, EOFError) as exc:
            raise DeviceUnreachable.at(device.name, address, type(exc).__name__) from exc
        except Exception as exc:  # paramiko raises bare SSHException on refused banners
            if "Authentication" in type(exc).__name__:
                raise AuthenticationFailed.at(device.name, address) from exc
            raise DeviceUnreachable.at(device.name, address, f"{type(exc).__name__}: {exc}") from exc
        return cls(device, connection, conn)

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
