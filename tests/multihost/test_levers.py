"""The levers the host-death tests pull: a SIGKILL of a host's whole worker tree
and a cut link do what they say."""

from __future__ import annotations

import psutil

from .conftest import PREFIX, NetLab, netns_pids


def test_kill_worker_tree_leaves_no_process_on_the_host(netlab: NetLab) -> None:
    killed = netlab.kill_worker_tree("lab-b")
    assert len(killed) >= 1 + 2  # the main process and its two prefork children
    assert not [p for p in killed if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert netns_pids(f"{PREFIX}-lab-b") == []
    assert not netlab.running("lab-b")


def test_a_cut_host_reaches_nothing_on_the_core_until_restored(netlab: NetLab) -> None:
    assert netlab.topology is not None
    redis_ip = netlab.topology.central_ip
    netlab.cut("lab-b")
    try:
        assert netlab.connect("lab-b", redis_ip, 6379, timeout=1.0) is not None
        assert netlab.connect("lab-a", redis_ip, 6379) is None
        assert netlab.running("lab-b")  # its worker lives on, cut off
    finally:
        netlab.restore("lab-b")
    assert netlab.connect("lab-b", redis_ip, 6379) is None
    netlab.wait_worker("lab-b")
