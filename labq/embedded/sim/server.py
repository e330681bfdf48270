"""The simulated lab: one asyncssh listener per testbed device, all in one event loop.

Each device listens on its ssh connection's ``ip:port`` (port 0 picks a free
one) with a shared, ephemeral host key, checks passwords against the device's
credentials, and runs an :class:`~labq.embedded.sim.cli_emulator.IosCli` per shell.
The fault knobs in ``custom.labq.sim`` wrap that CLI: latency, slow output,
hanging commands, disconnects, refused logins and closed ports. One process
holds 1,000 devices: a listener is one socket and a little state, and a
session costs nothing until a client connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# cryptography 46+ warns at asyncssh's import that DSA is deprecated; the
# sim offers no DSA keys, and the warning would land in every labq command.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh

from labq.devices.testbed import Connection, Device, Testbed
from labq.devices.testbed_yaml import as_testbed, check_sim_knobs
from labq.embedded.sim.accounting import Faults, SessionLog
from labq.embedded.sim.cli_emulator import IosCli, Mode
from labq.embedded.sim.control import start_control
from labq.embedded.sim.ios_config import RunningConfig
from labq.errors import SimLabError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SimDevice:
    """One simulated device: its testbed entry, faults, listener and session log."""

    device: Device
    ip: str
    port: int  # the actual port once listening (or the closed one when unreachable)
    faults: Faults
    #: The knobs behind ``faults`` (the testbed's, until the control endpoint changes them).
    knobs: dict[str, Any] = field(default_factory=dict)
    log: SessionLog = field(default_factory=SessionLog)
    acceptor: asyncssh.SSHAcceptor | None = None
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    #: The running-config every session of this device shares.
    config: RunningConfig | None = None

    def snapshot(self, events: bool = True) -> dict[str, Any]:
        return {**self.log.snapshot(events), "ip": self.ip, "port": self.port,
                "listening": self.acceptor is not None, "faults": dict(self.knobs)}


def ssh_connection(device: Device) -> Connection | None:
    """The connection the lab serves: the default one if ssh, else the first ssh one."""
    if device.connection.protocol == "ssh":
        return device.connection
    return next((c for c in device.connections.values() if c.protocol == "ssh"), None)


class _SshServer(asyncssh.SSHServer):
    """Per-connection auth for one device."""

    def __init__(self, dev: SimDevice) -> None:
        self._dev = dev
        self._conn: asyncssh.SSHServerConnection | None = None
        self._user = ""
        self._link = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._dev.connections.add(conn)
        self._link = self._dev.log.link_up()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._dev.connections.discard(self._conn)
        if self._link:
            self._dev.log.link_down(self._link)
            self._link = 0

    def begin_auth(self, username: str) -> bool:
        self._user = username
        return True  # always ask: even a device without credentials wants a login

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        creds = self._dev.device.credentials
        ok = not self._dev.faults.auth_fail and (creds is None or (
            hmac.compare_digest(username.encode(), creds.username.encode())
            and hmac.compare_digest(password.encode(), creds.password.encode())))
        if not ok:
            self._dev.log.record("auth_fail", user=username)
        return ok

    def session_requested(self) -> asyncssh.SSHServerSession[str]:
        return _CliSession(self._dev, self._user, self._conn)


class _CliSession(asyncssh.SSHServerSession[str]):
    """One shell (or exec) channel: echo, line assembly, faults, then the CLI."""

    def __init__(self, dev: SimDevice, user: str,
                 conn: asyncssh.SSHServerConnection | None) -> None:
        self._dev = dev
        self._user = user
        self._conn = conn
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._input: asyncio.Queue[str | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._session = 0
        self._exec: str | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._exec = command
        return True

    def session_started(self) -> None:
        self._session = self._dev.log.open(self._user)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: str, datatype: Any) -> None:
        self._input.put_nowait(data)

    def eof_received(self) -> bool:
        self._input.put_nowait(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # The client went away (or we closed): a hanging command ends here.
        if self._task is not None:
            self._task.cancel()
        if self._session:
            self._dev.log.close(self._session, "lost" if exc else "closed")
            self._session = 0

    def _write(self, text: str) -> None:
        assert self._chan is not None
        self._chan.write(text)

    async def _run(self) -> None:
        creds = self._dev.device.credentials
        cli = IosCli(self._dev.device.name, username=self._user or None,
                     enable_password=creds.enable_password if creds else None,
                     config=self._dev.config)
        self._dev.config = cli.config
        try:
            if self._exec is not None:
                cli.mode = Mode.ENABLE  # an exec request runs with the login's privilege
                await self._line(cli, self._exec, echo=True)
            else:
                await self._shell(cli)
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            return
        except Exception:  # a bug in the emulator must not kill the whole lab
            log.exception("simulated device %s: session %d failed", self._dev.device.name,
                          self._session)
        if self._chan is not None:
            with contextlib.suppress(Exception):  # already closing: nothing to report
                self._chan.exit(0)

    async def _shell(self, cli: IosCli) -> None:
        self._write(f"\r\n{cli.prompt}")
        buf: list[str] = []
        echo = True
        last_cr = False
        while (data := await self._input.get()) is not None:
            # Typeahead waits here while a command runs, as on a real terminal.
            for ch in data:
                if ch in "\r\n":
                    if ch == "\n" and last_cr:
                        last_cr = False
                        continue
                    last_cr = ch == "\r"
                    line, buf = "".join(buf), []
                    self._write("\r\n")
                    reply_echo = await self._line(cli, line, echo)
                    if reply_echo is None:
                        return
                    echo = reply_echo
                    continue
                last_cr = False
                if ch in "\x7f\x08":
                    if buf:
                        buf.pop()
                        if echo:
                            self._write("\b \b")
                elif ch == "\x03":  # Ctrl-C
                    buf = []
                    reply = cli.interrupt()
                    echo = reply.echo
                    self._write(f"^C\r\n{reply.prompt}")
                elif ch == "\x1a" and cli.mode is Mode.CONFIG:  # Ctrl-Z is `end`
                    buf = []
                    self._write(f"^Z\r\n{cli.feed('end').prompt}")
                elif ch >= " " or ch == "\t":
                    buf.append(ch)
                    if echo:
                        self._write(ch)

    async def _line(self, cli: IosCli, line: str, echo: bool) -> bool | None:
        """Run one line; the next line's echo flag, or None when the session ends."""
        faults, text = self._dev.faults, line.strip()
        if echo and text:  # echo off means a password: never recorded, never matched
            self._dev.log.record("command", self._session, command=text)
            if faults.disconnect_on and faults.disconnect_on.search(text):
                self._dev.log.record("disconnect", self._session, command=text)
                if self._conn is not None:
                    self._conn.close()
                return None
            if faults.hang and faults.hang.search(text):
                self._dev.log.record("hang", self._session, command=text)
                await asyncio.Event().wait()  # until connection_lost cancels us
        reply = cli.feed(line)
        if faults.latency and text:
            # Bare returns answer at once: netmiko probes the prompt with them and
            # would otherwise read a stale prompt followed by its own typeahead.
            await asyncio.sleep(faults.latency)
        out = reply.output.replace("\n", "\r\n") + "\r\n" if reply.output else ""
        await self._send(out if reply.close else out + reply.prompt)
        return None if reply.close else reply.echo

    async def _send(self, text: str) -> None:
        delay = self._dev.faults.slow_chars
        if not delay:
            self._write(text)
            return
        for ch in text:
            self._write(ch)
            await asyncio.sleep(delay)


def closed_port(ip: str) -> int:
    """A port nothing listens on (for an unreachable device given port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


class SimLab:
    """Every ssh device of a testbed, served from this process's event loop."""

    def __init__(self, testbed: Testbed | Path | str, *, control_host: str = "127.0.0.1",
                 control_port: int | None = 0, host_key: asyncssh.SSHKey | None = None) -> None:
        self.testbed = as_testbed(testbed)
        self.control_host = control_host
        self.control_port = control_port
        self._host_key = host_key
        self._control: asyncio.Server | None = None
        self._key: asyncssh.SSHKey | None = None
        self.devices: dict[str, SimDevice] = {}
        for device in self.testbed:
            conn = ssh_connection(device)
            if conn is None:
                continue  # a command: or telnet device is not simulated here
            assert conn.ip is not None and conn.port is not None
            self.devices[device.name] = SimDevice(device, conn.ip, conn.port,
                                                  Faults.from_sim(device.sim), dict(device.sim))

    @property
    def control_url(self) -> str | None:
        if self._control is None:
            return None
        port = self._control.sockets[0].getsockname()[1]
        return f"http://{self.control_host}:{port}"

    def ports(self) -> dict[str, int]:
        return {name: dev.port for name, dev in self.devices.items()}

    def state(self, device: str | None = None, events: bool = True) -> dict[str, Any] | None:
        if device is not None:
            dev = self.devices.get(device)
            return None if dev is None else dev.snapshot(events)
        return {name: dev.snapshot(events) for name, dev in self.devices.items()}

    def reset(self) -> None:
        for dev in self.devices.values():
            dev.log.reset()

    async def start(self) -> SimLab:
        """Open every listener (and the control endpoint); errors name the device."""
        key = self._key = self._host_key or asyncssh.generate_private_key("ssh-ed25519")
        results = await asyncio.gather(*(self._listen(dev, key) for dev in self.devices.values()),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors and self.control_port is not None:
            try:
                self._control = await start_control(self.state, self.reset,
                                                    self.control_host, self.control_port,
                                                    faults=self.set_faults)
            except OSError as exc:
                errors.append(SimLabError(f"control endpoint {self.control_host}:"
                                          f"{self.control_port}: {exc.strerror}"))
        if errors:
            await self.stop()
            raise errors[0]
        return self

    async def set_faults(self, name: str, knobs: dict[str, Any] | None) -> dict[str, Any] | None:
        """Change device ``name``'s fault knobs now (``knobs`` over its current
        ones; None: the testbed's again); its knobs, or None for no such
        device. Turning ``unreachable`` closes its port and drops its
        connections; turning it off listens again on the same port."""
        dev = self.devices.get(name)
        if dev is None:
            return None
        merged = dict(dev.device.sim) if knobs is None else {**dev.knobs, **knobs}
        merged = check_sim_knobs(merged, "the sim's control endpoint", name)
        was_unreachable = dev.faults.unreachable
        dev.knobs, dev.faults = merged, Faults.from_sim(merged)
        if dev.faults.unreachable and not was_unreachable:
            await self._close(dev)
            dev.log.record("unreachable")
        elif was_unreachable and not dev.faults.unreachable and self._key is not None:
            await self._listen(dev, self._key)
            dev.log.record("reachable")
        return dict(merged)

    @staticmethod
    async def _close(dev: SimDevice) -> None:
        if dev.acceptor is not None:
            dev.acceptor.close()
            with contextlib.suppress(Exception):
                await dev.acceptor.wait_closed()
            dev.acceptor = None
        for conn in list(dev.connections):
            conn.abort()

    async def _listen(self, dev: SimDevice, key: asyncssh.SSHKey) -> None:
        if dev.faults.unreachable:
            dev.port = dev.port or closed_port(dev.ip)
            return
        try:
            dev.acceptor = await asyncssh.listen(
                dev.ip, dev.port, server_factory=lambda: _SshServer(dev),
                server_host_keys=[key], gss_host=None, login_timeout=30,
                line_editor=False,  # we echo ourselves, as IOS does (no bash-like editing)
                reuse_address=True, backlog=128)
        except OSError as exc:
            raise SimLabError(f"simulated device {dev.device.name!r}: cannot listen on "
                              f"{dev.ip}:{dev.port}: {exc.strerror}") from exc
        dev.port = dev.acceptor.get_port()

    async def stop(self) -> None:
        """Close the listeners, every open connection and the control endpoint."""
        if self._control is not None:
            self._control.close()
        for dev in self.devices.values():
            if dev.acceptor is not None:
                dev.acceptor.close()
            for conn in list(dev.connections):
                conn.abort()
        for dev in self.devices.values():
            if dev.acceptor is not None:
                with contextlib.suppress(Exception):
                    await dev.acceptor.wait_closed()
                dev.acceptor = None
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.wait_closed()
            self._control = None

    async def __aenter__(self) -> SimLab:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
