"""Topology tasks: one session per role, every device leased together."""

from __future__ import annotations

from labq import device_task
from labq.devices.drivers import Session
from tasks.diag import sleep_through_soft_limits


@device_task(roles=("dut", "peer"), soft_time_limit=60, time_limit=90)
def ping_peer(dut: Session, peer: Session, count: int = 5) -> dict[str, str]:
    """Ping the peer's address from the DUT; the peer's own view of itself too."""
    return {"ping": dut.execute(f"ping {peer.device.ip} repeat {count}"),
            "peer": peer.execute("show clock"),
            "dut": dut.device.name, "peer_device": peer.device.name}


@device_task(roles=("a", "b", "c"), soft_time_limit=60, time_limit=90)
def triangle(a: Session, b: Session, c: Session, hold: float = 0.0,
             stubborn: bool = False) -> list[str]:
    """Run one command on each of three devices held together, then hold them
    for ``hold`` seconds; with ``stubborn``, through the soft time limit too
    (only the hard limit ends it)."""
    import time

    names = [s.execute("show clock") and s.device.name for s in (a, b, c)]
    if stubborn:
        sleep_through_soft_limits(hold)
    else:
        time.sleep(hold)
    return names


@device_task(soft_time_limit=60, time_limit=90)
def hold(session: Session, seconds: float = 0.2) -> str:
    """Run one command, then keep the device ``seconds`` longer; the device's name."""
    import time

    session.execute("show clock")
    time.sleep(seconds)
    return session.device.name
