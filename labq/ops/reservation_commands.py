"""``labq reserve / reservations / release / extend``: people's reservations.

The click commands; the CLI registers them with ``main.add_command``. The
work is :class:`labq.devices.reservations.Reservations`; the table is
:mod:`labq.ops.reservation_list`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from labq.client.submission import check_owner
from labq.devices.lease import SetWait, Wait
from labq.devices.reservations import Reservation, Reservations, recall, remember
from labq.devices.testbed_yaml import load_testbed
from labq.errors import ReservationError
from labq.ops.command_context import broker_option, command_settings, lab_redis
from labq.ops.device_list import natural_key, parse_labels
from labq.ops.reservation_list import print_reservations, reservation_rows
from labq.settings import Settings, parse_duration

_token = click.option("--token", envvar="LABQ_RESERVATION_TOKEN", show_envvar=True, default=None,
                      help="The reservation's token.  [default: the one labq reserve kept in "
                           "STATE_DIR/reservations.json]")


@contextmanager
def _reservations(settings: Settings) -> Iterator[Reservations]:
    with lab_redis(settings) as client:
        yield Reservations(client)


@click.command()
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@click.option("--for", "duration", required=True, metavar="DURATION",
              help="How long: 90s, 30m, 2h, 1h30m or seconds.")
@click.option("--note", default="", help="Why: shown to everyone with the reservation.")
@click.option("--labels", "labels", multiple=True, metavar="NAME=VALUE",
              help="Any devices with these labels instead of names (a comma means any of).")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --labels: how many devices, all or none.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait its turn in the devices' lines, or fail at once if one is busy.")
@click.option("--owner", envvar="LABQ_OWNER", show_envvar=True, default=None,
              help="For whom.  [default: the OS user]")
@broker_option
def reserve(devices: tuple[str, ...], duration: str, note: str, labels: tuple[str, ...],
            count: int, wait: bool, owner: str | None, broker: str | None) -> None:
    """Reserve DEVICE (or several, all or none) for a person; print its token.

    Tasks for a reserved device wait as for a busy one, and Picks take other
    devices, until it is released or its time is up. It waits its turn like
    a task; Ctrl-C leaves the line.
    """
    seconds = parse_duration(duration, "--for")
    who = check_owner(owner)
    settings = command_settings(broker_url=broker)
    slots = _slots(settings, devices, labels, count)
    with _reservations(settings) as reservations:
        shown: list[str] = []

        def waiting(answer: Wait | SetWait) -> None:
            holders = ", ".join(answer.holders[:3]) or "waiters ahead"
            line = (f"waiting for {answer.device}: number {answer.position} in line, "
                    f"held by {holders}" if isinstance(answer, Wait)
                    else f"waiting for {count} of {', '.join(answer.candidates)} "
                         f"(busy: {holders})")
            if line not in shown[-1:]:
                shown.append(line)
                click.echo(f"labq: {line}; Ctrl-C gives up", err=True)

        made = reservations.reserve(slots, owner=who, note=note, seconds=seconds, wait=wait,
                                    on_wait=waiting)
    kept = _keep(settings.state_dir, made)
    click.echo(f"reserved {', '.join(made.devices)} for {made.owner} until "
               f"{_clock(made.expires_at)} (reservation {made.id})")
    click.echo(f"token: {made.token}" + (f"  (kept in {kept})" if kept else ""))
    click.echo(f"release: labq release {made.devices[0]}"
               + ("" if kept else f" --token {made.token}"))


def _slots(settings: Settings, devices: tuple[str, ...], labels: tuple[str, ...],
           count: int) -> list[list[str]]:
    testbed = load_testbed(settings.testbed)
    if devices and labels:
        raise click.UsageError("give device names or --labels, not both")
    if devices:
        if count != 1:
            raise click.UsageError(f"--count {count} goes with --labels; names reserve "
                                   "each device named")
        if len(set(devices)) != len(devices):
            raise click.UsageError(f"a device is named twice: {' '.join(devices)}")
        return [[testbed.device(d).name] for d in devices]  # UnknownDevice names close ones
    pick = parse_labels(labels)
    if pick is None:
        raise click.UsageError("name a DEVICE, or give --labels NAME=VALUE")
    matching = sorted((d.name for d in testbed if pick.matches(d)), key=natural_key)
    if len(matching) < count:
        raise ReservationError(f"--labels {' '.join(labels)} matches {len(matching)} devices "
                               f"({', '.join(matching) or 'none'}), fewer than --count {count}")
    return [matching] * count


def _keep(state_dir: Path, made: Reservation) -> Path | None:
    try:
        return remember(state_dir, made)
    except OSError as exc:
        click.echo(f"labq: warning: token not kept ({exc}); note it down", err=True)
        return None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@broker_option
def reservations(as_json: bool, broker: str | None) -> None:
    """Who holds what, until when, and why; who waits; the last forced releases."""
    settings = command_settings(broker_url=broker)
    with _reservations(settings) as store:
        rows = reservation_rows(store)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_reservations(rows)


@click.command()
@click.argument("device")
@_token
@click.option("--force", is_flag=True,
              help="Release it without its token (logged, with who and when).")
@broker_option
def release(device: str, token: str | None, force: bool, broker: str | None) -> None:
    """Release the reservation on DEVICE: its token holder only, unless --force."""
    settings = command_settings(broker_url=broker)
    token = token or recall(settings.state_dir, device)
    with _reservations(settings) as store:
        gone = store.release(device, token=token, force=force, by=_who())
    forced = " (forced; logged)" if force else ""
    click.echo(f"released {', '.join(gone.devices)} (reservation {gone.id} of "
               f"{gone.owner}){forced}")


@click.command()
@click.argument("device")
@click.option("--for", "duration", required=True, metavar="DURATION",
              help="How much longer: 30m, 1h, 90s or seconds.")
@_token
@broker_option
def extend(device: str, duration: str, token: str | None, broker: str | None) -> None:
    """Extend the reservation on DEVICE by --for (its token holder only)."""
    seconds = parse_duration(duration, "--for")
    settings = command_settings(broker_url=broker)
    token = token or recall(settings.state_dir, device)
    with _reservations(settings) as store:
        longer = store.extend(device, seconds, token=token)
    click.echo(f"reservation {longer.id} on {', '.join(longer.devices)} now ends "
               f"{_clock(longer.expires_at)}")


def _who() -> str:
    return f"{check_owner(None)}@{socket.gethostname()}"


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


COMMANDS = (reserve, reservations, release, extend)
