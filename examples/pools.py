"""Pools and topologies: any free spine, and a leaf held together with a spine.

It works on any testbed whose devices carry `custom: labq: labels: {role: leaf}`
and `{role: spine}`, with three leaves on one segment; the demo testbed labels
r6-r8 and r14-r16 as leaves and r9-r10 and r17-r18 as spines. Run it against a
stack started by `labq up`, after the `export` line it prints.
"""

from __future__ import annotations

import sys

from rich.console import Console

import labq
from labq.client.report import outcome_table
from labq.devices.testbed_yaml import load_testbed
from tasks import device, topology


def main() -> int:
    settings = labq.Settings.load()
    leaves = [d.name for d in load_testbed(settings.testbed) if labq.Pick(role="leaf").matches(d)]
    if not leaves:
        print(f"no device of {settings.testbed} has the label role=leaf", file=sys.stderr)
        return 2
    with labq.Run("pools", soft_time_limit=30, time_limit=45, settings=settings) as run:
        # Any free spine: the worker chooses when it takes the lease.
        for _ in range(4):
            run.submit(device.execute, device=labq.Pick(role="spine"), command="show clock")
        # A topology: the leaf and a spine of its own segment, leased together.
        for leaf in leaves[:3]:
            run.submit(topology.ping_peer, dut=leaf, peer=labq.Pick(role="spine"), count=3)
    for outcome in run.outcomes:
        print(f"{outcome.task.rsplit('.', 1)[-1]}: {outcome.status} on {outcome.devices}")
    # pcall takes Picks too: three different leaves at once, in call order.
    clocks = labq.pcall(topology.triangle, a=[labq.Pick(role="leaf")], b=[labq.Pick(role="leaf")],
                        c=[labq.Pick(role="leaf")])
    print(f"three leaves held together: {', '.join(clocks[0])}")
    Console().print(outcome_table(run.outcomes, title=f"run {run.id}"))
    return 0 if all(o.ok for o in run.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
