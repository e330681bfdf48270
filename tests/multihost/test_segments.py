"""Segments on the network: a device is reachable only from its own lab hosts,
and a run over both segments runs each task on the host of its device."""

from __future__ import annotations

import subprocess

import labq
from tasks.device import execute

from .conftest import PREFIX, NetLab


def test_a_device_is_reachable_only_from_the_hosts_of_its_segment(netlab: NetLab) -> None:
    a1, b1 = netlab.device_ip("a1"), netlab.device_ip("b1")
    assert netlab.connect("lab-a", a1) is None
    assert netlab.connect("lab-b", b1) is None
    for host, ip in (("lab-b", a1), ("lab-a", b1), ("central", a1), ("central", b1)):
        error = netlab.connect(host, ip)
        assert error is not None and "unreachable" in error.lower(), (host, ip, error)


def test_a_lab_host_does_not_route_between_the_core_and_its_segment(netlab: NetLab) -> None:
    for host in netlab.hosts:
        forwarding = subprocess.run(["ip", "netns", "exec", f"{PREFIX}-{host}", "cat",
                                     "/proc/sys/net/ipv4/ip_forward"],
                                    capture_output=True, text=True, check=True).stdout
        assert forwarding.strip() == "0", host
    # Even told to go through lab-a, the central host cannot reach segment a.
    topo = netlab.topology
    assert topo is not None
    subnet = netlab.device_ip("a1").rsplit(".", 1)[0] + ".0/24"
    route = ["ip", "-n", f"{PREFIX}-central", "route", "add", subnet, "via",
             topo.hosts["lab-a"].core_ip]
    subprocess.run(route, check=True)
    try:
        assert netlab.connect("central", netlab.device_ip("a1"), timeout=2.0) is not None
    finally:
        subprocess.run(["ip", "-n", f"{PREFIX}-central", "route", "del", subnet], check=True)


def test_a_run_over_both_segments_runs_each_task_on_the_host_of_its_segment(
        netlab: NetLab) -> None:
    devices = netlab.devices("lab-a")[:4] + netlab.devices("lab-b")[:4]
    with labq.Run("routing", settings=netlab.settings_for_client(), progress=False) as run:
        for device in devices:
            run.submit(execute, device=device, command="show version")
        outcomes = run.wait(timeout=120)
    assert [o.status for o in outcomes] == [labq.Status.SUCCEEDED] * len(devices)
    for o in outcomes:
        assert o.device is not None and o.worker is not None
        segment = "lab-a" if o.device.startswith("a") else "lab-b"
        assert o.worker == netlab.node(segment), o
        assert f"{o.device} uptime is" in o.value


def test_flower_on_the_central_host_sees_every_lab_host(netlab: NetLab) -> None:
    workers = netlab.flower_get("/api/workers?refresh=1")
    assert netlab.node("lab-a") in workers and netlab.node("lab-b") in workers
