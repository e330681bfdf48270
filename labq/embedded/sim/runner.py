"""Run the simulated lab as a process: listen, announce readiness, stop on a signal.

Readiness is a JSON file written atomically once every listener is open:
``{"pid", "testbed", "control_url", "devices": {name: {"ip", "port",
"listening"}}}``. Ports matter because a testbed may give port 0: the ready
file is where clients learn the real ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
from pathlib import Path
from typing import Any

from labq.devices.testbed import Testbed
from labq.embedded.sim.server import SimLab

log = logging.getLogger(__name__)


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (a listener is one fd); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the old limit; a big lab then fails with a clear EMFILE
    return soft


def ready_info(lab: SimLab) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "testbed": str(lab.testbed.source) if lab.testbed.source else lab.testbed.name,
        "control_url": lab.control_url,
        "devices": {name: {"ip": dev.ip, "port": dev.port, "listening": dev.acceptor is not None}
                    for name, dev in lab.devices.items()},
    }


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    # Write then rename: a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(path)


async def run_lab(testbed: Testbed | Path | str, control_port: int = 0,
                  ready_file: Path | None = None, control_host: str = "127.0.0.1") -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lab = await SimLab(testbed, control_host=control_host, control_port=control_port).start()
    try:
        unreachable = sum(1 for d in lab.devices.values() if d.acceptor is None)
        log.info("simulated lab %r: %d devices listening, %d unreachable; control %s",
                 lab.testbed.name, len(lab.devices) - unreachable, unreachable, lab.control_url)
        if ready_file is not None:
            write_ready_file(ready_file, ready_info(lab))
        await stop.wait()
        log.info("simulated lab %r: stopping", lab.testbed.name)
    finally:
        await lab.stop()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


def serve(testbed_path: Testbed | Path | str, control_port: int = 0,
          ready_file: Path | str | None = None, control_host: str = "127.0.0.1") -> None:
    """Run the simulated lab for a testbed (file or object) in this process until
    SIGTERM/SIGINT, writing ``ready_file`` once every listener is open."""
    raise_nofile_limit()
    # asyncssh logs every connection at INFO: too loud for a lab of hundreds.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    asyncio.run(run_lab(testbed_path, control_port,
                        Path(ready_file) if ready_file is not None else None, control_host))
