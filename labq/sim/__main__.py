"""``python -m labq.sim``: the simulated lab, as ``labq sim`` runs it."""

from labq.sim.command import sim

sim(prog_name="python -m labq.sim")
