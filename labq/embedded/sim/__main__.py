"""``python -m labq.embedded.sim``: the simulated lab, as ``labq sim`` runs it."""

from labq.embedded.sim.command import sim

sim(prog_name="python -m labq.embedded.sim")
