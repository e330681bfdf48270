"""The multi-host lab of ``deploy/netns/labnet.sh``: its topology file and testbeds.

``labnet.sh`` writes one line per part of the lab to ``<state>/topology``::

    central lq-central 10.213.0.2
    root lq-root 10.213.0.1
    segment lab-a 1 lq-seg-lab-a 10.213.1.101 10.213.1.102 ...
    host lab-a lq-lab-a lab-a 10.213.0.11 10.213.1.11

:func:`write_testbeds` turns the segments into a testbed for the workers and
clients (every device, ``custom.labq.queue`` = its segment) and one testbed
per segment for that segment's simulated lab. ``python -m labq.embedded.netlab
testbeds TOPOLOGY DIR`` is what ``labnet.sh up`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from labq.embedded.sim.testbeds import DEMO_PASSWORD, device_entry, write_testbed
from labq.errors import ConfigError

SSH_PORT = 22


@dataclass(frozen=True)
class Segment:
    """A lab segment: its queue, namespace and device addresses."""

    queue: str
    namespace: str
    device_ips: tuple[str, ...]

    def device_names(self) -> list[str]:
        """``a1``, ``a2``, ... for segment ``lab-a``."""
        stem = self.queue.removeprefix("lab-")
        return [f"{stem}{i}" for i in range(1, len(self.device_ips) + 1)]


@dataclass(frozen=True)
class Host:
    """A lab host: the namespace its worker runs in and the segment it reaches."""

    name: str
    namespace: str
    queue: str
    core_ip: str
    segment_ip: str


@dataclass(frozen=True)
class Topology:
    central_ip: str
    root_ip: str
    segments: dict[str, Segment]
    hosts: dict[str, Host]

    @classmethod
    def read(cls, path: Path) -> Topology:
        """Parse ``labnet.sh``'s topology file."""
        central = root = ""
        segments: dict[str, Segment] = {}
        hosts: dict[str, Host] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            kind, *fields = line.split()
            if kind == "central":
                central = fields[1]
            elif kind == "root":
                root = fields[1]
            elif kind == "segment":
                segments[fields[0]] = Segment(fields[0], fields[2], tuple(fields[3:]))
            elif kind == "host":
                hosts[fields[0]] = Host(*fields[:5])
            else:
                raise ConfigError("topology", f"{path}:{number}", f"unknown line kind {kind!r}")
        if not central or not root:
            raise ConfigError("topology", str(path), "no central or root line; is the lab up?")
        return cls(central, root, segments, hosts)


def write_testbeds(topology: Topology, directory: Path, *, sim: dict[str, Any] | None = None,
                   max_sessions: int = 1, password: str = DEMO_PASSWORD,
                   name: str = "netlab") -> tuple[Path, dict[str, Path]]:
    """Write ``testbed.yaml`` (every device) and ``testbed-<queue>.yaml`` per segment.

    Devices listen on port 22 of their own address; ``sim`` knobs apply to all.
    Returns the full testbed and the per-segment ones by queue.
    """
    everything: dict[str, dict[str, Any]] = {}
    per_segment: dict[str, Path] = {}
    for queue, segment in topology.segments.items():
        devices = {dev: device_entry(ip, SSH_PORT, queue=queue, max_sessions=max_sessions, sim=sim)
                   for dev, ip in zip(segment.device_names(), segment.device_ips, strict=True)}
        everything.update(devices)
        per_segment[queue] = write_testbed(directory / f"testbed-{queue}.yaml", devices,
                                           name=f"{name}-{queue}", password=password)
    full = write_testbed(directory / "testbed.yaml", everything, name=name, password=password)
    return full, per_segment


@click.group()
def main() -> None:
    """Helpers for deploy/netns/labnet.sh."""


@main.command()
@click.argument("topology", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--latency", type=float, default=0.0, show_default=True,
              help="Seconds every simulated device waits before answering a command.")
def testbeds(topology: Path, directory: Path, latency: float) -> None:
    """Write the lab's testbeds into DIRECTORY from labnet.sh's TOPOLOGY file."""
    full, _ = write_testbeds(Topology.read(topology), directory,
                             sim={"latency": latency} if latency else None)
    click.echo(full)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m labq.embedded.netlab")
