"""``labq sim``: the click command; the CLI registers it with ``main.add_command(sim)``."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.command("sim")
@click.option("--testbed", "testbed", envvar="LABQ_TESTBED", show_envvar=True, default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="pyATS testbed YAML to simulate.  [default: the testbed setting, "
                   "config/testbed.yaml]")
@click.option("--control-port", envvar="LABQ_SIM_CONTROL_PORT", show_envvar=True, type=int,
              default=12000, show_default=True,
              help="Port of the JSON control endpoint on 127.0.0.1 (0 picks a free one).")
@click.option("--ready-file", envvar="LABQ_SIM_READY_FILE", show_envvar=True, default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Write the control URL and every device's port here once listening.")
@click.option("--loglevel", "-l", envvar="LABQ_LOGLEVEL", show_envvar=True, default="INFO",
              show_default=True, help="Log level of the simulated lab's own log lines.")
def sim(testbed: Path | None, control_port: int, ready_file: Path | None, loglevel: str) -> None:
    """Run the simulated lab: one SSH server per testbed device, until Ctrl-C.

    Devices emulate a Cisco IOS-XE CLI for netmiko's cisco_ios driver; the
    fault knobs under each device's custom.labq.sim apply.

    \b
    The control endpoint (JSON over HTTP on 127.0.0.1:CONTROL_PORT):
      GET    /devices[?events=0]        sessions, peaks, events, faults
      GET    /devices/NAME              one device
      POST   /reset                     clear events and peaks
      POST   /devices/NAME/faults       set fault knobs now, e.g.
             {"unreachable": true}, {"hang": "^show ver"}, {"latency": 0.5},
             {"slow_chars": 0.01}, {"disconnect_on": "^show"}, {"auth_fail": true}
      DELETE /devices/NAME/faults       back to the testbed's knobs
    """
    from labq.devices.testbed_yaml import load_testbed
    from labq.embedded.sim.runner import serve
    from labq.errors import TestbedError
    from labq.settings import Settings

    logging.basicConfig(level=loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = testbed or Settings.load().testbed
    try:
        testbed_obj = load_testbed(path)
    except TestbedError as exc:
        raise click.ClickException(str(exc)) from exc
    serve(testbed_obj, control_port=control_port, ready_file=ready_file)
