"""pytest with labq in fixtures: one fan-out per module, one assertion per device.

    LABQ_BROKER_URL=... LABQ_TESTBED=config/testbed.yaml pytest examples/test_lab.py

Devices are those of one lab segment (``LABQ_EXAMPLE_QUEUE``, default lab-a).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import labq
from labq.devices.testbed_yaml import load_testbed
from tasks import device

SEGMENT = os.environ.get("LABQ_EXAMPLE_QUEUE", "lab-a")


def healthy(dev: object) -> bool:
    return not getattr(dev, "sim", None)  # the simulated lab's faulty devices have knobs


@pytest.fixture(scope="module")
def run() -> Iterator[labq.Run]:
    with labq.Run("pytest-example", soft_time_limit=20, time_limit=30, progress=False) as r:
        yield r


@pytest.fixture(scope="module")
def versions(run: labq.Run) -> dict[str, labq.Outcome]:
    testbed = load_testbed(labq.Settings.load().testbed)
    names = [d.name for d in testbed if d.queue == SEGMENT and healthy(d)]
    for name in names:
        run.submit(device.execute, device=name, command="show version")
    return {o.device or "": o for o in run.wait(timeout=300)}


def test_the_segment_has_devices(versions: dict[str, labq.Outcome]) -> None:
    assert versions


def test_every_device_answers_show_version(versions: dict[str, labq.Outcome]) -> None:
    failed = {name: str(o.error) for name, o in versions.items() if not o.ok}
    assert failed == {}


def test_every_device_ran_on_its_own_segment(versions: dict[str, labq.Outcome]) -> None:
    assert {(o.worker or "").split("@")[0] for o in versions.values()} == {SEGMENT}
