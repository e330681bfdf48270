"""Pools and topologies on the session stack: Picks, several roles, all or nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import labq
from conftest import POOLS
from labq.app import LabqCelery
from labq.devices.lease import Leases
from labq.embedded.stack import Stack
from labq.keys import lease_keys
from tasks import device, topology

SPINES = POOLS[("lab-a", "spine")] + POOLS[("lab-b", "spine")]


def run(app: LabqCelery, name: str) -> labq.Run:
    return labq.Run(name, app=app, progress=False)


def client_of(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.settings.broker_url)


def lease_holders(client: redis.Redis, name: str) -> list[str]:
    return [h.decode() for h in client.zrange(lease_keys(name)[0], 0, -1)]


def test_a_pick_runs_on_a_matching_device_and_the_outcome_says_which(app: LabqCelery) -> None:
    with run(app, "pick") as r:
        for _ in range(4):
            r.submit(device.execute, device=labq.Pick(role="spine"), command="show clock")
    assert all(o.ok for o in r.outcomes), [o.error for o in r.outcomes]
    for o in r.outcomes:
        assert o.device in SPINES and o.devices == {"device": o.device}


def test_a_topology_task_gets_one_session_per_role_on_one_segment(app: LabqCelery) -> None:
    with run(app, "topo") as r:
        r.submit(topology.ping_peer, dut="lf-a1", peer=labq.Pick(role="spine"), count=3)
    [o] = r.outcomes
    assert o.ok, o.error
    peer = o.devices and o.devices["peer"]
    # The DUT is on lab-a, so the peer is one of lab-a's spines.
    assert o.devices == {"dut": "lf-a1", "peer": peer} and peer in POOLS[("lab-a", "spine")]
    assert o.device == "lf-a1"
    assert "Success rate is 100 percent (3/3)" in o.value["ping"]
    assert o.value["dut"] == "lf-a1" and o.value["peer_device"] == peer


def test_two_picks_in_one_task_never_get_the_same_device(app: LabqCelery) -> None:
    with run(app, "two-picks") as r:
        for _ in range(3):
            r.submit(topology.triangle, a=labq.Pick(role="leaf"), b=labq.Pick(role="leaf"),
                     c=labq.Pick(role="leaf"))
    for o in r.outcomes:
        assert o.ok, o.error
        assert o.devices is not None and sorted(o.devices.values()) == POOLS[("lab-a", "leaf")]


@pytest.mark.parametrize(("call", "message"), [
    (lambda r: r.submit(device.execute, device=labq.Pick(role="router"), command="x"),
     r"Pick\(role='router'\) matches no device in testbed 'session-lab'; role is one of "
     r"'leaf', 'p-leaf', 'p-spine', 'spine'"),
    (lambda r: r.submit(device.execute, device=labq.Pick(rolle="spine"), command="x"),
     r"no device has a label 'rolle' \(did you mean 'role'\?\)"),
    (lambda r: r.submit(topology.ping_peer, dut="lf-a1"),
     r"tasks.topology.ping_peer: no peer= argument; its roles are dut, peer"),
    (lambda r: r.submit(topology.ping_peer, dut="lf-a1", peer="sp-b1"),
     r"its devices span lab segments \(dut='lf-a1' on 'lab-a', peer='sp-b1' on 'lab-b'\)"),
    (lambda r: r.submit(topology.triangle, a="sp-b1", b=labq.Pick(role="spine"),
                        c=labq.Pick(role="spine")),
     r"b=Pick\(role='spine'\) has no device on 'lab-b' \(it matches sp-a1 on 'lab-a', "
     r"sp-a2 on 'lab-a'\)"),
    (lambda r: r.submit(topology.triangle, a=labq.Pick(role="spine"),
                        b=labq.Pick(role="spine"), c=labq.Pick(role="spine")),
     r"3 Picks .* need 3 different devices on one queue, and no queue has that many"),
    (lambda r: r.submit(topology.ping_peer, dut="nosuch", peer=labq.Pick(role="spine")),
     r"unknown device 'nosuch'"),
], ids=["no-match", "unknown-label", "missing-role", "two-segments", "short-pool-here",
        "short-pool", "unknown-name"])
def test_bad_selections_are_refused_at_submit_naming_what_is_wrong(
        app: LabqCelery, call: object, message: str) -> None:
    with run(app, "bad") as r:
        with pytest.raises((labq.DeviceSelectionError, labq.UnknownDevice), match=message):
            call(r)  # type: ignore[operator]
        assert r.outcomes == []  # nothing was queued


def test_a_pick_whose_only_free_match_is_on_the_other_segment_runs_there(
        app: LabqCelery, stack: Stack) -> None:
    leases = Leases(client_of(stack))
    busy = POOLS[("lab-a", "spine")]
    for name in busy:  # lab-a's spines are held by someone else for the whole test
        leases.acquire(name, f"someone-{name}", 1, ttl=30)
    try:
        with run(app, "elsewhere") as r:
            r.submit(device.execute, device=labq.Pick(role="spine"), command="show clock")
        [o] = r.outcomes
        assert o.ok, o.error
        assert o.device == "sp-b1" and o.worker is not None and o.worker.startswith("lab-b@")
        assert o.started_at is not None and o.queued_at is not None
        assert (o.started_at - o.queued_at).total_seconds() < 2.0
    finally:
        for name in busy:
            leases.release(name, f"someone-{name}")


def test_a_hard_kill_of_a_three_role_task_frees_every_lease_at_once(
        app: LabqCelery, stack: Stack) -> None:
    client = client_of(stack)
    with run(app, "kill-topo") as r:
        r.submit(topology.triangle, a="lf-a1", b="lf-a2", c="lf-a3", hold=60, stubborn=True,
                 soft_time_limit=1, time_limit=2)
        # Held together while it runs, each lease naming the same task.
        deadline = time.monotonic() + 10
        while not all(lease_holders(client, d) for d in POOLS[("lab-a", "leaf")]):
            assert time.monotonic() < deadline, "the topology never started"
            time.sleep(0.05)
        holders = {h for d in POOLS[("lab-a", "leaf")] for h in lease_holders(client, d)}
        assert holders == {o.task_id for o in r.outcomes}
    [o] = r.outcomes
    seen = time.monotonic()
    assert o.status is labq.Status.HARD_TIMEOUT, o.error
    while any(lease_holders(client, d) for d in POOLS[("lab-a", "leaf")]):
        assert time.monotonic() - seen < 1.0, "a lease outlived the kill by 1 s"
        time.sleep(0.02)


def labq_devices(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.settings.to_env(), "COLUMNS": "250"}
    return subprocess.run([str(Path(sys.executable).with_name("labq")), "devices", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_labq_devices_filters_by_label_and_shows_a_topologys_other_devices(
        app: LabqCelery, stack: Stack) -> None:
    client = client_of(stack)
    leaves = POOLS[("lab-a", "leaf")]
    with run(app, "devices-topo") as r:
        r.submit(topology.triangle, a=leaves[0], b=leaves[1], c=leaves[2], hold=3)
        deadline = time.monotonic() + 10
        while not all(lease_holders(client, d) for d in leaves):
            assert time.monotonic() < deadline, "the topology never started"
            time.sleep(0.05)
        out = labq_devices(stack, "--labels", "role=leaf", "--json")
        assert out.returncode == 0, out.stderr
        rows = {row["device"]: row for row in json.loads(out.stdout)}
        assert sorted(rows) == leaves  # only the leaves
        assert rows[leaves[0]]["labels"]["role"] == "leaf"
        for name in leaves:
            [holder] = rows[name]["holders"]
            assert holder["task_id"] == r.outcomes[0].task_id
            assert sorted(holder["with"]) == sorted(set(leaves) - {name})
        table = labq_devices(stack, "--labels", "role=leaf")
        assert "role=leaf" in table.stdout and f"with {leaves[1]}, {leaves[2]}" in table.stdout
    assert r.outcomes[0].ok, r.outcomes[0].error
    bad = labq_devices(stack, "--labels", "role")
    assert bad.returncode == 2
    assert "labq: error: --labels='role'" in bad.stderr and "NAME=VALUE" in bad.stderr
