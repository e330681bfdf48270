"""Generate testbed files for tests and benches: simulated devices on free loopback ports.

Free ports are found by binding them all at once and releasing them just
before the file is written, so the lab can bind them right after; another
process could in principle take one in between, which on loopback in a test
run does not happen in practice. ``fixed_ports=False`` writes port 0 instead,
and clients read the real ports from :attr:`SimProcess.ports`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from labq.embedded.ports import free_ports

DEMO_USER = "admin"
DEMO_PASSWORD = "labq-demo"


def device_entry(ip: str, port: int, *, queue: str | None = None, max_sessions: int = 1,
                 sim: Mapping[str, Any] | None = None, os_name: str = "iosxe",
                 credentials: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One device in pyATS testbed form."""
    labq: dict[str, Any] = {"max_sessions": max_sessions}
    if queue:
        labq["queue"] = queue
    if sim:
        labq["sim"] = dict(sim)
    entry: dict[str, Any] = {
        "os": os_name, "type": "router",
        # No `defaults: {class: unicon.Unicon}`: ssh devices here are for netmiko.
        "connections": {"cli": {"protocol": "ssh", "ip": ip, "port": port}},
        "custom": {"labq": labq},
    }
    if credentials:
        entry["credentials"] = dict(credentials)
    return entry


def write_testbed(path: Path, devices: Mapping[str, Mapping[str, Any]], *,
                  name: str = "generated", username: str = DEMO_USER,
                  password: str = DEMO_PASSWORD, enable_password: str | None = None) -> Path:
    """Write a testbed with testbed-level credentials and the given device entries."""
    credentials: dict[str, Any] = {"default": {"username": username, "password": password}}
    if enable_password is not None:
        credentials["enable"] = {"password": enable_password}
    data = {"testbed": {"name": name, "credentials": credentials},
            "devices": {n: dict(d) for n, d in devices.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_testbed(directory: Path, n: int = 3, *, prefix: str = "r", ip: str = "127.0.0.1",
                 queues: Iterable[str] | None = None, max_sessions: int = 1,
                 faults: Mapping[str, Mapping[str, Any]] | None = None,
                 fixed_ports: bool = True, name: str = "generated",
                 filename: str = "testbed.yaml", enable_password: str | None = None,
                 **sim: Any) -> Path:
    """Write ``directory/filename`` with devices ``r1..rn`` on free ports of ``ip``.

    ``queues`` are assigned round-robin; ``sim`` knobs apply to every device
    and ``faults`` adds knobs per device name (``{"r2": {"hang": "show version"}}``).
    """
    queue_list = list(queues or [])
    ports = free_ports(n, ip) if fixed_ports else [0] * n
    devices = {}
    for i, port in enumerate(ports):
        dev = f"{prefix}{i + 1}"
        knobs = {**sim, **(faults or {}).get(dev, {})}
        devices[dev] = device_entry(ip, port, max_sessions=max_sessions, sim=knobs,
                                    queue=queue_list[i % len(queue_list)] if queue_list else None)
    unknown = set(faults or {}) - set(devices)
    if unknown:
        raise ValueError(f"faults name devices not in the testbed: {sorted(unknown)}")
    return write_testbed(directory / filename, devices, name=name,
                         enable_password=enable_password)
