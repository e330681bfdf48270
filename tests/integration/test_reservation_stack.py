"""Reservations on the session stack: real workers, real SSH, and the
simulated lab's own session accounting as the judge of who touched what."""

from __future__ import annotations

import getpass
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import labq
from conftest import POOLS, SEGMENT_DEVICES, Ran
from labq.app import LabqCelery
from labq.devices.lease import Leases
from labq.devices.reservations import Reservations
from labq.embedded.stack import Stack
from tasks import diag, topology


@pytest.fixture()
def store(stack: Stack) -> Iterator[Reservations]:
    client = redis.Redis.from_url(stack.settings.broker_url)
    s = Reservations(client)
    yield s
    for r in s.all():  # the stack is shared: leave no device reserved
        s.release(r.devices[0], force=True, by="test teardown")
    client.close()


def opens(stack: Stack, device: str) -> list[float]:
    """When sessions were opened on ``device``, by the simulated device's own log."""
    assert stack.sim is not None
    return [e["t"] for e in stack.sim.state(device)["events"] if e["event"] == "open"]


@pytest.mark.parametrize("seed", [int(os.environ.get("PROPERTY_SEED") or
                                      random.SystemRandom().randrange(10**6))])
def test_reserved_devices_are_untouched_until_they_expire_then_served(
        stack: Stack, app: LabqCelery, store: Reservations, seed: int) -> None:
    """Two runs submit tasks by name and by Pick, in conflicting orders,
    while a person holds a named device and a spine. No session opens on
    either until the reservation ends; then the waiting tasks get them, and
    every task ends succeeded."""
    assert stack.sim is not None
    rnd = random.Random(seed)
    names = SEGMENT_DEVICES["lab-a"][:5]
    spines = POOLS[("lab-a", "spine")]
    mine = rnd.choice(names)
    store.reserve([[mine], [spines[0]]], owner="ana", note="property", seconds=5, wait=False)
    stack.sim.reset()
    start = time.time()
    orders = [names[:], names[::-1]]
    rnd.shuffle(orders[0])
    runs = [labq.Run(f"resv-{i}", app=app, progress=False, logs=False) for i in range(2)]

    def submit(run: labq.Run, order: list[str]) -> None:
        for i in range(30):
            if i % 3 == 2:
                run.submit(topology.hold, device=labq.Pick(role="spine"), seconds=0.05)
            else:
                run.submit(topology.hold, device=order[i % len(order)], seconds=0.05)

    threads = [threading.Thread(target=submit, args=(r, o)) for r, o in zip(runs, orders, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = [o for r in runs for o in r.wait(timeout=120)]
    for r in runs:
        r.close()
    assert len(outcomes) == 60
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
    ended = start + 5
    for device in (mine, spines[0]):
        early = [t for t in opens(stack, device) if t < ended - 0.05]
        assert not early, f"{device} opened {len(early)} sessions while reserved (seed {seed})"
    # The named device's tasks waited for the end, and were served soon after it.
    late = opens(stack, mine)
    assert late, f"no task ran on {mine} (seed {seed})"
    assert late[0] - ended < 3.0, f"{mine} idle {late[0] - ended:.1f} s after its reservation"
    # Picks took the other spines meanwhile: none waited out the reservation.
    picked = [o for o in outcomes if (o.devices or {}).get("device", o.device) in [*spines[1:], "sp-b1"]]
    assert picked
    print(f"seed {seed}: {mine} first served {late[0] - ended:.2f} s after the end")


def test_hold_on_failure_keeps_the_device_for_the_owner_and_tasks_wait(
        stack: Stack, app: LabqCelery, store: Reservations) -> None:
    assert stack.sim is not None
    device = SEGMENT_DEVICES["lab-b"][6]
    with labq.Run("bgp", app=app, progress=False, logs=False, owner="ana",
                  hold_on_failure="1m") as run:
        failed_id = run.submit(diag.fail_device, device=device, message="BGP down")
    (failed,) = run.outcomes
    assert failed.status is labq.Status.FAILED and failed.error is not None
    assert "BGP down" in failed.error.message
    (held,) = run.held
    assert held.devices == (device,) and held.owner == "ana" and held.token
    listed = store.on(device)
    assert listed is not None and listed.id == held.id and failed_id in listed.note
    assert listed.expires_at == pytest.approx(time.time() + 60, abs=10)

    stack.sim.reset()
    with labq.Run("after", app=app, progress=False, logs=False) as later:
        later.submit(topology.hold, device=device, seconds=0.05)
        time.sleep(2.0)
        later.refresh()
        assert later.outcomes[0].status is labq.Status.QUEUED
        assert opens(stack, device) == []  # nobody touched it
        released = time.time()
        store.release(device, token=held.token)
    assert later.outcomes[0].ok
    first = opens(stack, device)[0]
    assert first - released < 2.0


def test_a_cancelled_run_holds_nothing(stack: Stack, app: LabqCelery,
                                        store: Reservations) -> None:
    """A cancel interrupts with the soft limit's signal: its tasks did not
    fail, so hold_on_failure keeps none of their devices."""
    device = SEGMENT_DEVICES["lab-b"][5]
    run = labq.Run("cancelled-hold", app=app, progress=False, logs=False, hold_on_failure="1h")
    try:
        run.submit(topology.hold, device=device, seconds=30)
        end = time.monotonic() + 30
        while run.outcomes[0].status is not labq.Status.RUNNING:
            assert time.monotonic() < end, "the task never started"
            time.sleep(0.1)
            run.refresh()
        time.sleep(1.0)  # its session is open
        (outcome,) = run.cancel(grace=5)
        assert outcome.status is labq.Status.CANCELLED
    finally:
        run.close()
    assert store.on(device) is None and run.held == []
    assert Leases(store.client).holders(device) == []


@pytest.fixture()
def labq_cli(labq_cli_in_process: Callable[..., Ran]) -> Callable[..., Ran]:
    """``labq ARGS`` in process, as the user ana."""
    return lambda tmp, *args: labq_cli_in_process(tmp, *args, env={"LABQ_OWNER": "ana"})


def test_the_cli_reserves_lists_extends_and_releases_with_the_kept_token(
        store: Reservations, tmp_path: Path, labq_cli: Callable[..., Ran]) -> None:
    device = SEGMENT_DEVICES["lab-b"][7]
    out = labq_cli(tmp_path, "reserve", device, "--for", "10m", "--note", "BGP flap")
    assert out.returncode == 0, out.stderr
    assert f"reserved {device} for ana until" in out.stdout and "token: " in out.stdout
    kept = json.loads((tmp_path / "reservations.json").read_text())
    assert [v["devices"] for v in kept.values()] == [[device]]

    listing = labq_cli(tmp_path, "reservations", "--json")
    (row,) = json.loads(listing.stdout)["reservations"]
    assert (row["devices"], row["owner"], row["note"]) == ([device], "ana", "BGP flap")
    table = labq_cli(tmp_path, "reservations").stdout
    assert device in table and "BGP flap" in table
    assert device in labq_cli(tmp_path, "devices").stdout.split("reservations")[-1]
    status = json.loads(labq_cli(tmp_path, "status", "--json").stdout)
    assert [r["devices"] for r in status["reservations"]] == [[device]]

    busy = labq_cli(tmp_path, "reserve", device, "--for", "1m", "--no-wait")
    assert busy.returncode == 2 and busy.stderr.startswith("labq: error: ")
    assert "busy" in busy.stderr and "--no-wait" in busy.stderr

    other = tmp_path / "elsewhere"
    other.mkdir()
    refused = labq_cli(other, "release", device)
    assert refused.returncode == 2
    assert f"'{device}' is reserved by 'ana'" in refused.stderr and "--force" in refused.stderr
    assert store.on(device) is not None  # nothing changed

    before = store.on(device)
    assert before is not None
    longer = labq_cli(tmp_path, "extend", device, "--for", "30m")
    assert longer.returncode == 0, longer.stderr
    after = store.on(device)
    assert after is not None and after.expires_at == pytest.approx(before.expires_at + 1800, abs=2)

    done = labq_cli(tmp_path, "release", device)
    assert done.returncode == 0, done.stderr
    assert store.on(device) is None


def test_a_forced_release_is_logged_and_shown(store: Reservations, tmp_path: Path,
                                              labq_cli: Callable[..., Ran]) -> None:
    device = SEGMENT_DEVICES["lab-b"][8]
    store.reserve([[device]], owner="bob", note="soak test", seconds=600, wait=False)
    out = labq_cli(tmp_path, "release", device, "--force")
    assert out.returncode == 0 and "forced; logged" in out.stdout
    forced = json.loads(labq_cli(tmp_path, "reservations", "--json").stdout)["forced"]
    assert forced[0]["owner"] == "bob" and forced[0]["devices"] == device
    assert forced[0]["by"].startswith(f"{getpass.getuser()}@")


@pytest.mark.parametrize(("args", "named"), [
    (("reserve", "a1", "--for", "-5m"), "--for='-5m'"),
    (("reserve", "a1", "--for", "soon"), "--for='soon'"),
    (("reserve", "a1", "--for", "0"), "--for='0'"),
    (("extend", "a1", "--for", "1x"), "--for='1x'"),
    (("reserve", "nosuch", "--for", "1h"), "'nosuch'"),
    (("reserve", "--labels", "role=nosuch", "--for", "1h"), "role=nosuch"),
    (("release", "a1"), "'a1' holds no reservation"),
])
def test_bad_reservation_input_names_the_value_and_changes_nothing(
        store: Reservations, tmp_path: Path, labq_cli: Callable[..., Ran], args: tuple[str, ...],
        named: str) -> None:
    out = labq_cli(tmp_path, *args)
    assert out.returncode == 2 and out.stderr.startswith("labq: error: "), out.stderr
    assert named in out.stderr, out.stderr
    assert store.all() == []
