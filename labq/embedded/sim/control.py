"""The simulated lab's control endpoint: tiny HTTP with JSON, on loopback.

``GET /devices`` returns ``{name: {"sessions", "peak", "opened", "ip", "port",
"listening", "faults", "events": [...]}}`` (``?events=0`` leaves the events
out), ``GET /devices/<name>`` one device, ``POST /reset`` clears events and
peaks, ``GET /health`` answers ``{"ok": true}``.

Fault knobs change at run time: ``POST /devices/<name>/faults`` with a JSON
object of ``custom.labq.sim`` knobs (``unreachable``, ``hang``,
``slow_chars``, ``disconnect_on``, ``auth_fail``, ``latency``) sets those
knobs, leaving the others; ``DELETE /devices/<name>/faults`` restores the
testbed's. Both answer the device's knobs now. ``unreachable: true`` closes
the device's port and drops its connections; ``false`` opens it again. A bad
knob or value is refused with 400 and the reason. It runs in the lab's own event
loop, so state is read without locks. Plain HTTP keeps clients trivial: curl,
a browser, or :func:`sim_state`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from labq.errors import SimLabError, TestbedError

log = logging.getLogger(__name__)

#: ``state(device or None, with_events)`` -> JSON-able dict, or None for no such device.
StateFn = Callable[[str | None, bool], dict[str, Any] | None]
#: ``faults(device, knobs or None to restore the testbed's)`` -> the knobs
#: now, or None for no such device; raises TestbedError for a bad knob.
FaultsFn = Callable[[str, dict[str, Any] | None], Awaitable[dict[str, Any] | None]]


async def start_control(state: StateFn, reset: Callable[[], None],
                        host: str = "127.0.0.1", port: int = 0,
                        faults: FaultsFn | None = None) -> asyncio.Server:
    """Serve the control endpoint; the caller closes the returned server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(_request(reader, state, reset, faults), 10.0)
        except (asyncio.TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            status, body = "400 Bad Request", {"error": "bad request"}
        data = json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _request(reader: asyncio.StreamReader, state: StateFn, reset: Callable[[], None],
                   faults: FaultsFn | None = None) -> tuple[str, Any]:
    method, target, _ = (await reader.readline()).decode("latin-1").split(" ", 2)
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    raw = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    query = parse_qs(url.query)
    with_events = query.get("events", ["1"])[0] not in ("0", "false", "no")
    parts = [p for p in url.path.split("/") if p]
    if method == "GET" and parts == ["health"]:
        return "200 OK", {"ok": True}
    if method == "GET" and parts == ["devices"]:
        return "200 OK", state(None, with_events)
    if method == "GET" and len(parts) == 2 and parts[0] == "devices":
        one = state(parts[1], with_events)
        if one is None:
            return "404 Not Found", {"error": f"no simulated device {parts[1]!r}"}
        return "200 OK", one
    if method == "POST" and parts == ["reset"]:
        reset()
        return "200 OK", {"ok": True}
    if (faults is not None and method in ("POST", "DELETE") and len(parts) == 3
            and parts[0] == "devices" and parts[2] == "faults"):
        return await _faults(faults, parts[1], method, raw)
    return "404 Not Found", {"error": f"no route {method} {url.path}"}


async def _faults(faults: FaultsFn, device: str, method: str, raw: bytes) -> tuple[str, Any]:
    knobs: dict[str, Any] | None = None
    if method == "POST":
        try:
            knobs = json.loads(raw or b"{}")
        except ValueError:
            return "400 Bad Request", {"error": "the body must be a JSON object of sim knobs"}
        if not isinstance(knobs, dict):
            return "400 Bad Request", {"error": f"the body must be a JSON object, not {knobs!r}"}
    try:
        now = await faults(device, knobs)
    except TestbedError as exc:
        return "400 Bad Request", {"error": str(exc)}
    if now is None:
        return "404 Not Found", {"error": f"no simulated device {device!r}"}
    return "200 OK", now


def _call(url: str, method: str = "GET", timeout: float = 10.0,
          body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError, OSError):
            reason = ""
        raise SimLabError(f"simulated lab control {url}: HTTP {exc.code}"
                          + (f": {reason}" if reason else "")) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise SimLabError(f"simulated lab control {url} unreachable: {exc}") from exc


def sim_state(control_url: str, device: str | None = None, *, events: bool = True,
              timeout: float = 10.0) -> dict[str, Any]:
    """Every simulated device's state (or one device's), from the control endpoint."""
    path = "/devices" if device is None else f"/devices/{quote(device, safe='')}"
    result: dict[str, Any] = _call(f"{control_url.rstrip('/')}{path}?events={int(events)}",
                                   timeout=timeout)
    return result


def sim_reset(control_url: str, timeout: float = 10.0) -> None:
    """Clear every device's events and peak counter."""
    _call(f"{control_url.rstrip('/')}/reset", method="POST", timeout=timeout)


def sim_faults(control_url: str, device: str, knobs: dict[str, Any] | None,
               timeout: float = 10.0) -> dict[str, Any]:
    """Set ``device``'s fault ``knobs`` (None: back to the testbed's); its knobs now."""
    url = f"{control_url.rstrip('/')}/devices/{quote(device, safe='')}/faults"
    result: dict[str, Any] = _call(url, method="POST" if knobs is not None else "DELETE",
                                   timeout=timeout, body=knobs)
    return result
