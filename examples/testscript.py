"""Fan `show version` out to every device of the testbed, then report.

Run it against a stack started by `labq up` (after the `export` line it
prints), or let `labq demo` start everything and run it for you.
"""

from __future__ import annotations

import sys

from rich.console import Console

import labq
from labq.client.report import outcome_table
from labq.devices.testbed_yaml import load_testbed
from tasks import device, diag


def main() -> int:
    settings = labq.Settings.load()
    testbed = load_testbed(settings.testbed)
    with labq.Run("demo", soft_time_limit=5, time_limit=10, settings=settings) as run:
        for dev in testbed:
            run.submit(device.execute, device=dev.name, command="show version")
        # A task that ignores the soft interrupt: only the hard limit stops it.
        run.submit(diag.stubborn, seconds=60, soft_time_limit=1, time_limit=3)
        for outcome in run.as_completed(timeout=120):
            if outcome.status is not labq.Status.SUCCEEDED:
                print(f"{outcome.device or outcome.task}: {outcome.status} {outcome.error or ''}")
    Console().print(outcome_table(run.outcomes, title=f"run {run.id}"))
    report = run.report(settings.state_dir / "reports" / f"{run.id}.html")
    print(f"report: {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
