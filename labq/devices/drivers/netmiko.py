"""netmiko over SSH: the default driver."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from labq.devices.drivers.base import Session, register
from labq.devices.drivers.reader import CommandRead, prompt_line, prompt_pattern
from labq.errors import AuthenticationFailed, CommandTimeout, DeviceDisconnected, DeviceUnreachable

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
#: Longest pause between two polls of a quiet channel.
POLL_MAX = 0.02
#: How many returns, at most, to see the same prompt twice in a row.
PROMPT_TRIES = 6
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
            session.learn_prompt(timeout)
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

    def learn_prompt(self, timeout: float) -> str:
        """Find the device's prompt: the same complete prompt line after two
        returns in a row (netmiko's own guess can be part of a slow prompt)."""
        conn = self._conn
        deadline = time.monotonic() + timeout
        seen: str | None = None
        for _ in range(PROMPT_TRIES):
            conn.write_channel(conn.RETURN)
            text = ""
            line = None
            while line is None:
                text += self._read("<return>", text, deadline, timeout)
                line = prompt_line(text)
            if line == seen:
                self.prompt = line
                self._pattern = prompt_pattern(line)
                conn.base_prompt = line[:-1]
                return line
            seen = line
        raise DeviceUnreachable.at(self.device.name, self._address,
                                   f"no steady prompt after {PROMPT_TRIES} returns "
                                   f"(last {seen!r})")

    def execute(self, command: str, timeout: float | None = None) -> str:
        conn = self._conn
        limit = timeout or DEFAULT_READ_TIMEOUT
        deadline = time.monotonic() + limit
        conn.read_channel()  # nothing stale may pass for this command's output
        read = CommandRead(command, self._pattern)
        self.pending = read
        conn.write_channel(conn.normalize_cmd(command))
        while not read.feed(self._read(command, read.arrived, deadline, limit)):
            pass
        self.pending = None
        output = str(conn.strip_ansi_escape_codes(read.output))
        self.transcript.append((command, output))
        return output

    def configure(self, lines: Sequence[str]) -> str:
        out = str(self._conn.send_config_set(list(lines)))
        self.learn_prompt(DEFAULT_READ_TIMEOUT)  # a `hostname` line changes it
        return out

    @property
    def _address(self) -> str:
        return f"{self.connection.ip}:{self.connection.port}"

    def _read(self, command: str, arrived: str, deadline: float, limit: float) -> str:
        """The next chunk from the channel: waits for one, and raises
        :class:`DeviceDisconnected` as soon as the device has closed the
        connection, or :class:`CommandTimeout` at ``deadline``."""
        from netmiko.exceptions import ReadException

        conn = self._conn
        started = deadline - limit
        pause = 0.0005
        while True:
            try:
                # The raw channel: netmiko's read_channel() rewrites line ends per
                # read, and a slow device's "\r" and "\n" arrive in two reads.
                chunk = str(conn.channel.read_channel())
            except (ReadException, OSError, EOFError):
                chunk, gone = "", True
            else:
                gone = not chunk and self._gone()
            if chunk:
                return chunk
            now = time.monotonic()
            if gone:
                self.closed = True  # nothing to say goodbye to
                self._drop()
                raise DeviceDisconnected.during(self.device.name, self._address, command,
                                                now - started, len(arrived))
            if now >= deadline:
                raise CommandTimeout.during(self.device.name, self._address, command,
                                            limit, arrived)
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, POLL_MAX)

    def _gone(self) -> bool:
        """Whether the device has closed the channel and nothing is left to read."""
        chan = getattr(self._conn, "remote_conn", None)
        if chan is None:
            return True
        if chan.recv_ready():
            return False
        if chan.closed or chan.eof_received:
            return True
        transport = chan.get_transport()
        return transport is None or not transport.is_active()

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
