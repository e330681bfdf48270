"""Reading a command's output up to the real prompt, however the text is split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labq.devices.drivers.reader import CommandRead, prompt_line, prompt_pattern

pytestmark = pytest.mark.unit

OUTPUT = "NAME: \"Chassis\"\r\nPID: C8000V\r\n\r\nlast line: spine-12# is not a prompt"
SENT = "show inventory\r\n" + OUTPUT + "\r\nspine-12#"
WANT = OUTPUT.replace("\r\n", "\n")


def feed_all(read: CommandRead, text: str, cuts: list[int]) -> list[bool]:
    """Feed ``text`` split at ``cuts``; whether the read was done after each chunk."""
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [read.feed(text[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


@given(st.lists(st.integers(min_value=1, max_value=len(SENT) - 1), max_size=40))
def test_the_output_is_whole_however_it_arrives(cuts: list[int]) -> None:
    read = CommandRead("show inventory", prompt_pattern("spine-12#"))
    done = feed_all(read, SENT, cuts)
    # Done only with the last chunk: no part of the prompt passes for all of it.
    assert done[-1] and not any(done[:-1])
    assert read.output == WANT


def test_one_char_at_a_time_with_cr_and_lf_apart() -> None:
    read = CommandRead("show inventory", prompt_pattern("spine-12#"))
    assert feed_all(read, SENT, list(range(1, len(SENT)))) [-1]
    assert read.output == WANT


def test_a_stale_prompt_before_the_echo_is_not_the_end() -> None:
    read = CommandRead("show clock", prompt_pattern("r5#"))
    assert not read.feed("\r\nr5#")
    assert not read.feed("show clock\r\n")
    assert not read.feed("*12:00:00.000 UTC\r\nr5")
    assert read.feed("#")
    assert read.output == "*12:00:00.000 UTC"


@pytest.mark.parametrize("end", ["r5#", "r5>", "r5(config)#", "r5(config-if)#", "r5# "])
def test_other_modes_of_the_prompt_end_the_command(end: str) -> None:
    read = CommandRead("end", prompt_pattern("r5#"))
    assert read.feed("end\r\n" + end)
    assert read.output == ""


@pytest.mark.parametrize("tail", ["r55#", "xr5#", "r5", "r5(config", "r5#x"])
def test_a_near_miss_is_not_the_prompt(tail: str) -> None:
    read = CommandRead("show x", prompt_pattern("r5#"))
    assert not read.feed("show x\r\nfoo\r\n" + tail)
    assert read.output == "foo\n" + tail  # what arrived, kept for a timeout


def test_what_arrived_before_the_prompt_is_kept_as_it_came() -> None:
    read = CommandRead("show version", prompt_pattern("r5#"))
    read.feed("show ver")
    assert read.arrived == ""  # the echo is not output
    read.feed("sion\r\nCisco IOS XE Soft")
    assert read.output == "Cisco IOS XE Soft" and not read.done


@pytest.mark.parametrize(("text", "line"), [
    ("\r\nr5#", "r5#"), ("banner\r\nr5>", "r5>"), ("user@host:~$ ", "user@host:~$"),
    ("\r\nr", None), ("", None), ("r5#\r\n", None),
])
def test_prompt_line_takes_only_a_complete_prompt(text: str, line: str | None) -> None:
    assert prompt_line(text) == line


def test_a_prompt_must_end_in_a_sign() -> None:
    with pytest.raises(ValueError, match=r"'r5' is not a prompt"):
        prompt_pattern("r5")
