"""The simulated lab: many SSH devices with an IOS-like CLI, from one process.

``SimProcess`` runs it as a child process (tests, the embedded stack),
``SimLab`` in the caller's event loop, ``sim_state`` reads its session
accounting, and ``make_testbed`` writes testbeds on free loopback ports.
"""

from __future__ import annotations

from labq.embedded.ports import free_ports
from labq.embedded.sim.control import sim_faults, sim_reset, sim_state
from labq.embedded.sim.process import SimProcess
from labq.embedded.sim.runner import serve
from labq.embedded.sim.server import SimLab
from labq.embedded.sim.testbeds import make_testbed, write_testbed

__all__ = [
    "SimLab",
    "SimProcess",
    "free_ports",
    "make_testbed",
    "serve",
    "sim_faults",
    "sim_reset",
    "sim_state",
    "write_testbed",
]
