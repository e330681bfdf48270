"""labq.pcall expands its arguments by pyATS's rules (zip, shortest wins)."""

from __future__ import annotations

import pytest

from labq.client.pcall import expand_calls
from labq.errors import SubmitError


def calls(targets: object = "t", cargs: tuple[object, ...] = (), iargs: object = (),
          ckwargs: dict[str, object] | None = None, ikwargs: object = (),
          **var: list[object]) -> list[tuple[object, tuple[object, ...], dict[str, object]]]:
    return expand_calls(targets, cargs, iargs, ckwargs, ikwargs, var)  # type: ignore[arg-type]


def test_varkwargs_zip_with_common_kwargs() -> None:
    got = calls(device=["r1", "r2"], ckwargs={"command": "show clock"})
    assert got == [("t", (), {"command": "show clock", "device": "r1"}),
                   ("t", (), {"command": "show clock", "device": "r2"})]


def test_shortest_argument_list_wins() -> None:
    got = calls(iargs=[(1,), (2,), (3,)], ikwargs=[{"a": 1}, {"a": 2}], b=[7, 8, 9, 10])
    assert got == [("t", (1,), {"a": 1, "b": 7}), ("t", (2,), {"a": 2, "b": 8})]


def test_common_args_come_before_instance_args_and_ikwargs_override_ckwargs() -> None:
    got = calls(cargs=(0,), iargs=[(1,)], ckwargs={"x": "c", "y": "c"}, ikwargs=[{"x": "i"}])
    assert got == [("t", (0, 1), {"x": "i", "y": "c"})]


def test_several_targets_count_as_a_list() -> None:
    got = calls(["a", "b", "c"], value=[1, 2])
    assert [t for t, _, _ in got] == ["a", "b"]


def test_one_target_in_a_list_repeats() -> None:
    assert [t for t, _, _ in calls(["a"], value=[1, 2])] == ["a", "a"]


def test_nothing_to_count_is_an_error() -> None:
    with pytest.raises(SubmitError, match="how many calls"):
        calls(ckwargs={"x": 1})
