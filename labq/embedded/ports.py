"""Free TCP ports for servers a test or the embedded stack starts itself."""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack

#: The lowest port :func:`free_ports` picks (when the ephemeral range allows).
FIRST_PORT = 20000


def free_ports(count: int, ip: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``ip`` right now, chosen at random
    below the kernel's ephemeral range: a port from that range may become the
    source port of some outgoing connection before the simulated device binds
    it (seen as "address already in use" at the lab's start)."""
    low = _ephemeral_start()
    # Above the fixed ports labq's own configs use (the demo lab's 12001-12020,
    # Redis 6379, Flower 5555), which a test may bind at the same time.
    candidates = list(range(FIRST_PORT if low > FIRST_PORT + 2048 else 1024, low))
    random.shuffle(candidates)
    with ExitStack() as stack:
        ports: list[int] = []
        for port in candidates:
            if len(ports) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((ip, port))
            except OSError:
                sock.close()
                continue
            stack.enter_context(sock)
            ports.append(port)
        while len(ports) < count:  # the low range is full: let the kernel choose
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((ip, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _ephemeral_start(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The first port the kernel hands out as a source port (Linux; else 32768)."""
    try:
        with open(path) as f:
            return max(2048, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port free on ``host`` right now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (TCP). With
    ``SO_REUSEADDR``, as Redis and asyncio's servers bind: a port a stopped
    server left in TIME_WAIT is free, one something listens on is not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
