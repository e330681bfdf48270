"""``labq demo``: the embedded stack, the simulated lab, the example testscript.

It starts Redis, the simulated lab from ``config/testbed.yaml``, workers
``lab-a`` and ``lab-b`` and Flower; runs ``examples/testscript.py`` against
them as any testscript would run (a separate process, configured by
``LABQ_*`` variables); prints the Flower URL; and tears everything down.
"""

from __future__ import annotations

import subprocess
import sys
import time

import click

from labq.embedded.ports import port_free
from labq.embedded.stack import PROJECT_ROOT, Stack, child_env
from labq.settings import Settings

TESTSCRIPT = PROJECT_ROOT / "examples" / "testscript.py"


def run_demo(settings: Settings, keep: bool = False) -> int:
    if not port_free(settings.flower_address, settings.flower_port):
        settings = settings.replace(flower_port=0)  # someone else has 5555
    stack = Stack(settings, redis_port=0)
    click.echo("starting Redis, the simulated lab, workers lab-a and lab-b, and Flower ...")
    try:
        stack.start()
        code = subprocess.call([sys.executable, str(TESTSCRIPT)], env=child_env(stack.settings),
                               cwd=PROJECT_ROOT)
        s = stack.settings
        click.echo(f"Flower: {stack.flower_url}  (user {s.flower_user!r}, "
                   f"password {s.flower_password!r})")
        if keep:
            click.echo(f"The stack stays up until Ctrl-C. In another shell:\n  {stack.export_line()}")
            while True:
                stack.check_alive()
                time.sleep(1.0)
        if sys.stdin.isatty():
            # A person at the terminal may want to look at Flower first.
            click.echo("Press Enter to tear the stack down (labq demo --keep keeps it up "
                       "until Ctrl-C).")
            sys.stdin.readline()
        else:
            click.echo("labq demo --keep keeps the stack up, Flower included, until Ctrl-C.")
        return code
    except KeyboardInterrupt:
        return 0 if keep else 130
    finally:
        click.echo("tearing down ...")
        stack.stop()
