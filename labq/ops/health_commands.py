"""``labq health / maintenance / resume / retire``: device health by hand.

The click commands; the CLI registers them with ``main.add_command``. The
work is :class:`labq.devices.health.HealthBook`. A state that blocks
(``maintenance``, ``retired``, ``bad``) refuses new tasks at once; the tasks
holding the device when it is set finish first, and each command says which.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.table import Table

from labq.client.submission import check_owner
from labq.devices.health import Health, HealthBook, HealthRecord
from labq.devices.testbed_yaml import load_testbed
from labq.ops.command_context import broker_option, command_settings, lab_redis
from labq.ops.device_list import natural_key
from labq.settings import Settings

_by = click.option("--by", envvar="LABQ_OWNER", show_envvar=True, default=None,
                   help="Who makes the change.  [default: the OS user]")


@contextmanager
def _book(settings: Settings) -> Iterator[HealthBook]:
    with lab_redis(settings) as client:
        yield HealthBook(client)


def _names(settings: Settings, devices: tuple[str, ...]) -> list[str]:
    """The testbed's names of ``devices`` (UnknownDevice names the close ones); all if none."""
    testbed = load_testbed(settings.testbed)
    if not devices:
        return sorted(testbed.devices, key=natural_key)
    return list(dict.fromkeys(testbed.device(d).name for d in devices))


def _change(devices: tuple[str, ...], state: Health, note: str, by: str | None,
            broker: str | None) -> None:
    who = check_owner(by)
    if not devices:
        raise click.UsageError("name at least one DEVICE")
    settings = command_settings(broker_url=broker)
    names = _names(settings, devices)
    with _book(settings) as book:
        for name in names:
            record = book.set(name, state, reason=note, by=who)
            holders = [h.holder for h in book.leases.holders(name)]
            click.echo(f"{name}: {record.describe()}")
            if state.blocks:
                held = (f"{len(holders)} holder(s) finish first ({', '.join(holders)}); "
                        if holders else "no task holds it; ")
                click.echo(f"  {held}new tasks for {name} fail at once with "
                           "DeviceUnavailable, and Picks skip it")
            else:
                click.echo(f"  {name} takes new tasks again")


@click.command()
@click.argument("devices", nargs=-1, metavar="DEVICE...")
@click.option("--note", required=True, help="Why (shown with the device, e.g. 'RMA 4711').")
@_by
@broker_option
def maintenance(devices: tuple[str, ...], note: str, by: str | None,
                broker: str | None) -> None:
    """Take DEVICE out for maintenance: its current holders finish, new
    tasks for it fail at once with DeviceUnavailable, Picks skip it.
    People can still reserve it. 'labq resume' puts it back."""
    _change(devices, Health.MAINTENANCE, note, by, broker)


@click.command()
@click.argument("devices", nargs=-1, metavar="DEVICE...")
@click.option("--note", default="resumed by hand", show_default=True, help="Why.")
@_by
@broker_option
def resume(devices: tuple[str, ...], note: str, by: str | None, broker: str | None) -> None:
    """Put DEVICE back to work (state good), from maintenance, bad or retired."""
    _change(devices, Health.GOOD, note, by, broker)


@click.command()
@click.argument("devices", nargs=-1, metavar="DEVICE...")
@click.option("--note", default="retired by hand", show_default=True,
              help="Why it leaves the lab.")
@_by
@broker_option
def retire(devices: tuple[str, ...], note: str, by: str | None, broker: str | None) -> None:
    """Retire DEVICE: as maintenance, for good (until 'labq resume')."""
    _change(devices, Health.RETIRED, note, by, broker)


#: The built-in health check (tasks/device.py).
CHECK_TASK = "tasks.device.healthcheck"


@click.command()
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@click.option("--check", is_flag=True,
              help="Run the health check on each DEVICE now (on every device if none is "
                   "named) and wait for them: a pass makes it good, a failure bad.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@broker_option
def health(devices: tuple[str, ...], check: bool, as_json: bool, broker: str | None) -> None:
    """Each DEVICE's health (every testbed device if none is named); with
    names, also their history, newest first."""
    settings = command_settings(broker_url=broker)
    names = _names(settings, devices)
    if check:
        _check_now(settings, names, quiet=as_json)
    with _book(settings) as book:
        now = book.get(names)
        past = {n: book.history(n) for n in names} if devices else {}
    if as_json:
        click.echo(json.dumps([{**_row(now[n]), "history": [_row(r) for r in past.get(n, [])]}
                               for n in names], indent=2))
        return
    console = Console()
    table = Table(title="device health")
    for col in ("device", "state", "since", "by", "reason"):
        table.add_column(col)
    for n in names:
        r = now[n]
        table.add_row(n, r.state.value, _when(r.since), r.by, r.reason)
    console.print(table)
    for n, records in past.items():
        if records:
            console.print(f"[bold]{n}[/bold] history:")
            for r in records:
                console.print(f"  {_when(r.since)}  {r.state.value:<11} {r.by}: {r.reason}",
                              highlight=False)


def _check_now(settings: Settings, names: list[str], quiet: bool) -> None:
    """Run the health check on ``names`` as one labq run, and wait for it."""
    from labq.app import create_app
    from labq.client.run import Run

    app = create_app(settings)
    try:
        with Run("health-check", app=app, progress=False if quiet else None, logs=False) as run:
            for name in names:
                run.submit(CHECK_TASK, device=name)
        if not quiet:
            for outcome in run.outcomes:
                verdict = ("passed" if outcome.ok else
                           f"failed: {outcome.error.type if outcome.error else outcome.status}")
                click.echo(f"{outcome.device}: health check {outcome.task_id[:8]} {verdict}")
    finally:
        app.close()


def _row(r: HealthRecord) -> dict[str, object]:
    return {"device": r.device, "state": r.state.value, "reason": r.reason, "since": r.since,
            "by": r.by}


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


COMMANDS = (health, maintenance, resume, retire)
