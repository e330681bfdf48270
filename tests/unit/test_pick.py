"""Labels, Picks and the plan of a task's roles, on testbeds of our own."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labq.devices.pick import Pick, decode, encode
from labq.devices.selection import assign, plan, role_arguments
from labq.devices.testbed import Testbed
from labq.devices.testbed_yaml import build_testbed
from labq.errors import DeviceSelectionError, TestbedError

pytestmark = pytest.mark.unit


def lab(devices: dict[str, tuple[str, dict[str, object]]]) -> Testbed:
    """name -> (queue, labels)."""
    data = {"testbed": {"name": "ours"}, "devices": {
        name: {"os": "nxos", "type": "switch", "platform": "n9k",
               "connections": {"cli": {"protocol": "ssh", "ip": "10.0.0.1", "port": 22}},
               "custom": {"labq": {"queue": queue, "labels": labels}}}
        for name, (queue, labels) in devices.items()}}
    return build_testbed(data, "ours.yaml", Path("ours.yaml"), "ours")


LAB = lab({"sw1": ("seg-x", {"tier": "edge", "speed": 100}),
           "sw2": ("seg-x", {"tier": "edge", "speed": 400}),
           "sw3": ("seg-y", {"tier": "core"}),
           "sw4": ("seg-y", {"tier": "edge", "speed": 100})})


def test_labels_are_the_devices_own_keys_and_its_custom_ones() -> None:
    assert LAB.device("sw1").all_labels == {"os": "nxos", "type": "switch", "platform": "n9k",
                                            "tier": "edge", "speed": "100"}


@pytest.mark.parametrize(("labels", "message"), [
    ({"os": "iosxe"}, r"custom.labq.labels.os.*the device's own os"),
    ({"tier": ["a"]}, r"custom.labq.labels.tier.*non-empty string or number"),
    ({"bad key": "x"}, r"custom.labq.labels.bad key.*letters, digits"),
])
def test_a_bad_label_names_the_key(labels: dict[str, object], message: str) -> None:
    with pytest.raises(TestbedError, match=message):
        lab({"sw9": ("seg-x", labels)})


def test_a_pick_matches_every_label_any_listed_value_and_skips_excluded() -> None:
    def names(pick: Pick) -> list[str]:
        return [d.name for d in LAB if pick.matches(d)]

    assert names(Pick(tier="edge")) == ["sw1", "sw2", "sw4"]
    assert names(Pick(tier="edge", speed=100)) == ["sw1", "sw4"]
    assert names(Pick(tier=["core", "edge"], exclude=["sw2"])) == ["sw1", "sw3", "sw4"]
    assert names(Pick(os="nxos", exclude="sw1")) == ["sw2", "sw3", "sw4"]


@given(st.dictionaries(st.sampled_from(["tier", "speed", "os"]),
                       st.lists(st.text("abc", min_size=1), min_size=1, max_size=3), max_size=3),
       st.lists(st.sampled_from(["sw1", "sw2", "sw3"]), max_size=2))
def test_a_pick_travels_as_json_and_comes_back_equal(labels: dict[str, list[str]],
                                                     exclude: list[str]) -> None:
    pick = Pick(exclude=exclude, **labels)
    assert decode(encode(pick)) == pick
    assert decode("sw1") == "sw1"


def test_no_match_names_the_values_that_exist_or_the_close_label() -> None:
    with pytest.raises(DeviceSelectionError, match=r"tier is one of 'core', 'edge'"):
        Pick(tier="spine").members(LAB)
    with pytest.raises(DeviceSelectionError,
                       match=r"no device has a label 'teir' \(did you mean 'tier'\?\)"):
        Pick(teir="edge").members(LAB)


def test_a_plan_keeps_each_segment_that_can_serve_all_roles() -> None:
    found = plan(LAB, {"a": Pick(tier="edge"), "b": Pick(tier="edge")}, "labq")
    # seg-y has one edge switch only: two Picks of it cannot both be served there.
    assert list(found.queues) == ["seg-x"]
    found = plan(LAB, {"device": Pick(tier="edge")}, "labq")
    assert sorted(found.queues) == ["seg-x", "seg-y"] and found.preferred == "seg-x"
    found = plan(LAB, {"dut": "sw3", "peer": Pick(tier="edge")}, "labq")
    assert {q: [s.candidates for s in slots] for q, slots in found.queues.items()} == {
        "seg-y": [("sw3",), ("sw4",)]}


@pytest.mark.parametrize(("roles", "message"), [
    ({"dut": "sw1", "peer": "sw3"},
     r"span lab segments \(dut='sw1' on 'seg-x', peer='sw3' on 'seg-y'\)"),
    ({"dut": "sw1", "peer": "sw1"}, r"device 'sw1' is named for two roles"),
    ({"dut": "sw3", "peer": Pick(tier="core")},
     r"peer=Pick\(tier='core'\) has no device on 'seg-y' \(it matches only the named ones\)"),
])
def test_plans_that_cannot_work_say_why(roles: dict[str, object], message: str) -> None:
    with pytest.raises(DeviceSelectionError, match=message):
        plan(LAB, roles, "labq")  # type: ignore[arg-type]


def test_role_arguments_refuse_a_missing_role_naming_the_roles() -> None:
    with pytest.raises(DeviceSelectionError, match=r"t: no b= argument; its roles are a, b"):
        role_arguments(("a", "b"), {"a": "sw1"}, "t")
    with pytest.raises(DeviceSelectionError, match=r"t: a=5 is not a device name or a labq.Pick"):
        role_arguments(("a",), {"a": 5}, "t")


@given(st.lists(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True),
                min_size=1, max_size=5),
       st.sets(st.sampled_from("abcdef")))
def test_assign_finds_distinct_free_devices_whenever_they_exist(
        slots: list[list[str]], busy: set[str]) -> None:
    import itertools

    got = assign(slots, lambda d: d not in busy)
    exists = any(len(set(c)) == len(c) and not set(c) & busy
                 for c in itertools.product(*slots))
    assert (got is not None) == exists
    if got is not None:
        assert len(set(got)) == len(got) and all(d in s for d, s in zip(got, slots, strict=True))
