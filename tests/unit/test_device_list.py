"""``labq devices`` lists devices in the order a person counts them."""

from __future__ import annotations

from labq.ops.device_list import natural_key


def test_devices_sort_naturally() -> None:
    names = ["r10", "r2", "r1", "r11", "spine-10", "spine-2", "a1", "r1a", "R3"]
    assert sorted(names, key=natural_key) == ["R3", "a1", "r1", "r1a", "r2", "r10", "r11",
                                              "spine-2", "spine-10"]
