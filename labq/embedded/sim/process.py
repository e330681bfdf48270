"""Run the simulated lab as a child process, for the embedded stack and tests.

The child leads its own process group (``labq.embedded.processes.spawn``), so
:meth:`SimProcess.stop` reaches everything it started. Readiness is the
ready file the child writes once every listener is open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from labq.embedded.processes import spawn, stop_tree
from labq.embedded.sim.control import sim_faults, sim_reset, sim_state
from labq.errors import SimLabError


class SimProcess:
    """``python -m labq.embedded.sim`` for one testbed; a context manager.

    ``state_dir`` holds the ready file and ``sim.log`` (a fresh temporary
    directory by default).
    """

    def __init__(self, testbed: Path | str, *, control_port: int = 0,
                 state_dir: Path | None = None, log_path: Path | None = None,
                 env: dict[str, str] | None = None, ready_timeout: float = 60.0) -> None:
        self.testbed = Path(testbed)
        self.control_port = control_port
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="labq-sim-"))
        self.ready_file = self.state_dir / "sim-ready.json"
        self.log_path = log_path or self.state_dir / "sim.log"
        self.env = env
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def control_url(self) -> str:
        return str(self._ready()["control_url"])

    @property
    def ports(self) -> dict[str, int]:
        """Each simulated device's actual port (unreachable ones: the closed port)."""
        return {name: int(d["port"]) for name, d in self._ready()["devices"].items()}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _ready(self) -> dict[str, Any]:
        if not self.info:
            raise SimLabError(f"simulated lab for {self.testbed} is not started")
        return self.info

    def start(self) -> SimProcess:
        """Start the child and wait for its ready file; :class:`SimLabError` on failure."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = spawn([sys.executable, "-m", "labq.embedded.sim", "--testbed", str(self.testbed),
                           "--control-port", str(self.control_port),
                           "--ready-file", str(self.ready_file)],
                          log_path=self.log_path, env=env)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SimLabError(f"simulated lab for {self.testbed} exited with code "
                                  f"{self.proc.returncode}:\n{self._log_tail()}")
            if self.ready_file.exists():
                try:
                    self.info = json.loads(self.ready_file.read_text())
                    return self
                except json.JSONDecodeError:
                    pass  # not renamed into place yet; cannot happen, but be patient
            time.sleep(0.05)
        self.stop()
        raise SimLabError(f"simulated lab for {self.testbed} not ready after "
                          f"{self.ready_timeout:.0f} s:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
        if self.proc is not None:
            stop_tree(self.proc, timeout=timeout)
            self.proc = None
        self.info = {}

    def state(self, device: str | None = None, *, events: bool = True) -> dict[str, Any]:
        """See :func:`labq.embedded.sim.control.sim_state`."""
        return sim_state(self.control_url, device, events=events)

    def reset(self) -> None:
        sim_reset(self.control_url)

    def set_faults(self, device: str, **knobs: Any) -> dict[str, Any]:
        """Change ``device``'s fault knobs now (see :func:`sim_faults`)."""
        return sim_faults(self.control_url, device, knobs)

    def clear_faults(self, device: str) -> dict[str, Any]:
        """Give ``device`` its testbed's fault knobs again."""
        return sim_faults(self.control_url, device, None)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
