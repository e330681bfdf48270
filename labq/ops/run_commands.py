"""``labq runs / attach / report``: runs found again after their testscript.

The click commands; the CLI registers them with ``main.add_command``. The
registry is :mod:`labq.client.run_info`, the handle ``labq.Run.attach``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import redis
from rich.console import Console

from labq.errors import BrokerUnavailable
from labq.ops.command_context import broker_option, command_settings
from labq.ops.run_list import STATES, print_runs, run_rows
from labq.redis_client import connect, unavailable
from labq.settings import parse_duration


@click.command()
@click.option("--owner", default=None, help="Only this owner's runs.")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only runs in this state.")
@click.option("--since", default=None, metavar="DURATION",
              help="Only runs started this long ago or later: 1d, 12h, 30m.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@broker_option
def runs(owner: str | None, state: str | None, since: str | None, as_json: bool,
         broker: str | None) -> None:
    """List runs, newest first, with their tasks by status."""
    window = parse_duration(since, "--since") if since is not None else None
    settings = command_settings(broker_url=broker)
    client = connect(settings.backend_url, settings, socket_timeout=10, socket_connect_timeout=5)
    try:
        rows = run_rows(client, owner=owner, state=state, since=window)
    except redis.RedisError as exc:
        raise BrokerUnavailable(unavailable(settings.backend_url, exc, settings)) from exc
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_runs(rows)


@click.command()
@click.argument("run_id", metavar="RUN")
@broker_option
def attach(run_id: str, broker: str | None) -> None:
    """Follow RUN (its id, or a unique start of it) as its testscript would:
    the progress bar and log lines, then the results table.

    Ctrl-C detaches and does NOT cancel the run (labq cancel RUN does).
    """
    from labq.client.report import outcome_table
    from labq.client.run import Run

    run = Run.attach(run_id, settings=command_settings(broker_url=broker))
    try:
        click.echo(f"attached to run {run.id} ({run.script}, owner {run.owner or '?'}); "
                   "Ctrl-C detaches, it does not cancel", err=True)
        try:
            run.wait()
        except KeyboardInterrupt:
            click.echo(f"\ndetached from run {run.id}; it goes on (labq attach {run.id} "
                       f"to follow it again, labq cancel {run.id} to stop it)", err=True)
        Console(highlight=False).print(outcome_table(run.outcomes, run.id))
    finally:
        run.close()


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where to write it.  [default: RUN_ID.html]")
@broker_option
def report(run_id: str, output: Path | None, broker: str | None) -> None:
    """Write RUN's HTML report from Redis, now, whether or not it has ended."""
    from labq.client.run import Run

    run = Run.attach(run_id, settings=command_settings(broker_url=broker), progress=False, logs=False)
    try:
        path = run.report(output or Path(f"{run.id}.html"))
    finally:
        run.close()
    final = sum(o.status.final for o in run.outcomes)
    click.echo(f"wrote {path}: {len(run.outcomes)} tasks, {final} ended")


COMMANDS = (runs, attach, report)
