"""The simulated lab's control endpoint: tiny HTTP with JSON, on loopback.

``GET /devices`` returns ``{name: {"sessions", "peak", "opened", "ip", "port",
"listening", "events": [...]}}`` (``?events=0`` leaves the events out),
``GET /devices/<name>`` one device, ``POST /reset`` clears events and peaks,
``GET /health`` answers ``{"ok": true}``. It runs in the lab's own event
loop, so state is read without locks. Plain HTTP keeps clients trivial: curl,
a browser, or :func:`sim_state`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from labq.errors import SimLabError

log = logging.getLogger(__name__)

#: ``state(device or None, with_events)`` -> JSON-able dict, or None for no such device.
StateFn = Callable[[str | None, bool], dict[str, Any] | None]


async def start_control(state: StateFn, reset: Callable[[], None],
                        host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Serve the control endpoint; the caller closes the returned server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(_request(reader, state, reset), 10.0)
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


async def _request(reader: asyncio.StreamReader, state: StateFn,
                   reset: Callable[[], None]) -> tuple[str, Any]:
    method, target, _ = (await reader.readline()).decode("latin-1").split(" ", 2)
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
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
    return "404 Not Found", {"error": f"no route {method} {url.path}"}


def _call(url: str, method: str = "GET", timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SimLabError(f"simulated lab control {url}: HTTP {exc.code}") from exc
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
