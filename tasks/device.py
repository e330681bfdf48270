"""Built-in device tasks: run commands, apply configuration, check reachability."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from labq import device_task
from labq.devices.drivers import Session
from labq.devices.testbed import Device
from labq.errors import ConfigError


@device_task
def execute(session: Session, command: str | None = None,
            commands: Sequence[str] | None = None,
            timeout: float | None = None) -> str | dict[str, str]:
    """Run ``command`` and return its output, or each of ``commands`` and
    return ``{command: output}``."""
    if (command is None) == (commands is None):
        raise ConfigError("command/commands", (command, commands), "give exactly one of them")
    if command is not None:
        return session.execute(command, timeout=timeout)
    return {c: session.execute(c, timeout=timeout) for c in commands or ()}


@device_task
def configure(session: Session, lines: Sequence[str]) -> dict[str, object]:
    """Apply ``lines`` in configuration mode and verify each against the
    running-config; fails naming the lines that did not take."""
    transcript = session.configure(lines)
    running = session.execute("show running-config")
    missing = [line for line in lines if line.strip() not in running]
    if missing:
        raise RuntimeError(f"{session.device.name}: lines not in the running-config: {missing}")
    return {"applied": list(lines), "transcript": transcript}


@device_task(session=False)
def reachable(device: Device, timeout: float = 3.0) -> dict[str, object]:
    """Whether this worker's host can open a TCP connection to the device.

    Takes no lease and does not log in, so it never waits for a busy device.
    """
    result: dict[str, object] = {"device": device.name, "host": socket.gethostname()}
    conn = next(iter(device.connections.values()), None)
    if conn is None or not conn.ip:
        return {**result, "reachable": False, "error": "no ip/port connection"}
    address = f"{conn.ip}:{conn.port or 22}"
    try:
        with socket.create_connection((conn.ip, conn.port or 22), timeout=timeout):
            pass
    except OSError as exc:
        return {**result, "reachable": False, "address": address, "error": str(exc)}
    return {**result, "reachable": True, "address": address}
