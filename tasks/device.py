"""Built-in device tasks: run commands, apply configuration, check reachability
and health."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from labq import device_task
from labq.devices.drivers import Session
from labq.devices.testbed import Device
from labq.errors import ConfigError, DeviceError


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


@device_task(health_check=True, soft_time_limit=60, time_limit=90, lease_timeout=600)
def healthcheck(session: Session) -> dict[str, object]:
    """The device's health check: it connects and logs in, answers ``show
    version``, and both its prompt and that output name it. Passing makes
    the device ``good``, failing (here, or at connect or login) ``bad``
    (labq.devices.health); it may run on a device whose health blocks tasks."""
    name = session.device.name
    output = session.execute("show version")
    problems = []
    if name.lower() not in session.prompt.lower():
        problems.append(f"its prompt {session.prompt!r} does not name it")
    if name.lower() not in output.lower():
        first = next((line for line in output.splitlines() if line.strip()), "")
        problems.append(f"its show version does not name it (first line: {first[:80]!r})")
    if problems:
        raise DeviceError(f"device {name!r} is not itself: {'; '.join(problems)}", device=name)
    return {"device": name, "prompt": session.prompt,
            "version": next((line for line in output.splitlines() if "Version" in line), "")}
