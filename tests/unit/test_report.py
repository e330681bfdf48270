from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from labq.client.progress import Progress
from labq.client.report import MAX_TICKS, outcome_table, render, tick_label, tick_step, ticks
from labq.outcome import Outcome, RemoteError, Status

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def outcome(i: int, status: Status, slot: str | None) -> Outcome:
    started = T0 + timedelta(seconds=i) if slot else None
    return Outcome(task_id=f"t{i}", task="tasks.device.execute", device=f"r{i}", status=status,
                   value="Cisco <IOS>" if status is Status.SUCCEEDED else None,
                   error=RemoteError("DeviceUnreachable", "r2 <down>") if status is Status.FAILED
                   else None, worker=slot.split("/")[0] if slot else None, slot=slot,
                   started_at=started, finished_at=started + timedelta(seconds=2) if started else None)


OUTCOMES = [outcome(1, Status.SUCCEEDED, "lab-a@h/0"), outcome(2, Status.FAILED, "lab-a@h/1"),
            outcome(3, Status.SUCCEEDED, "lab-a@h/0"), outcome(4, Status.CANCELLED, None)]


def test_report_draws_one_bar_per_started_task_in_one_lane_per_slot() -> None:
    html = render("run-1", OUTCOMES)
    assert html.count('class="bar"') == 3 and html.count('class="lane"') == 2
    assert 'data-status="failed"' in html


def test_report_escapes_device_output_and_errors() -> None:
    html = render("run-<1>", OUTCOMES)
    assert "Cisco &lt;IOS&gt;" in html and "r2 &lt;down&gt;" in html and "run-&lt;1&gt;" in html
    assert "<IOS>" not in html


def test_outcome_table_shows_every_task() -> None:
    console = Console(record=True, width=200)
    console.print(outcome_table(OUTCOMES))
    text = console.export_text()
    for word in ("r1", "r4", "succeeded", "failed", "cancelled", "DeviceUnreachable"):
        assert word in text


def test_plain_progress_without_a_tty_and_device_prefixed_logs() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    with Progress("run-1", total=4, enabled=True, console=console) as bar:
        bar.log("r7", "INFO", "hello [not markup]")
        bar.advance(OUTCOMES[:2])
    text = console.export_text()
    assert "[r7] hello [not markup]" in text
    assert "run-1: 2/4 done, 1 not succeeded" in text


def test_progress_off_prints_nothing_but_logs() -> None:
    console = Console(record=True, width=200)
    with Progress("run-1", total=4, enabled=False, console=console) as bar:
        bar.advance(OUTCOMES)
    assert console.export_text() == ""


def test_outcome_table_keeps_the_first_line_of_a_long_error() -> None:
    noisy = Outcome(task_id="t9", task="tasks.device.execute", device="r9", status=Status.FAILED,
                    error=RemoteError("DeviceUnreachable", "r9 is unreachable\n\nCommon causes:\n"
                                      "1. Incorrect hostname"))
    console = Console(record=True, width=200)
    console.print(outcome_table([noisy]))
    text = console.export_text()
    assert "DeviceUnreachable: r9 is unreachable" in text
    assert "Common causes" not in text
    assert "Common causes" in render("run-9", [noisy])  # the report keeps all of it


@given(st.floats(min_value=0.0005, max_value=200_000, allow_nan=False))
def test_axis_ticks_are_round_and_cover_the_span(span: float) -> None:
    values = ticks(span)
    step = tick_step(span)
    assert values[0] == 0
    assert values[-1] >= span * (1 - 1e-9)  # the last tick is at or past the end
    assert len(values) == 2 or values[-2] < span
    assert 2 <= len(values) <= MAX_TICKS + 1
    # 1, 2 or 5 times a power of ten, or a clock's minutes and hours.
    mantissa = f"{step:e}".split("e")[0].rstrip("0").rstrip(".")
    clock = {1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600}
    assert (step < 1 and mantissa in {"1", "2", "5"}) or step in clock or step % 43200 == 0
    for k, value in enumerate(values):
        assert math.isclose(value, k * step, rel_tol=1e-9)


@pytest.mark.parametrize(("span", "labels"), [
    (5.5, ["0", "1 s", "2 s", "3 s", "4 s", "5 s", "6 s"]),
    (11.0, ["0", "2 s", "4 s", "6 s", "8 s", "10 s", "12 s"]),
    (0.33, ["0", "0.05 s", "0.1 s", "0.15 s", "0.2 s", "0.25 s", "0.3 s", "0.35 s"]),
    (250.0, ["0", "1 min", "2 min", "3 min", "4 min", "5 min"]),
    (5400.0, ["0", "15 min", "30 min", "45 min", "1 h", "1.25 h", "1.5 h"]),
])
def test_axis_labels_land_on_round_values(span: float, labels: list[str]) -> None:
    assert [tick_label(v) for v in ticks(span)] == labels


def test_each_bar_is_labelled_with_its_device_and_long_lanes_fit() -> None:
    long_slot = "a-very-long-worker-name@lab-host-17.example.net/11"
    html = render("run-1", [*OUTCOMES, outcome(5, Status.SUCCEEDED, long_slot)])
    labels = re.findall(r'<svg class="bar-label"[^>]*><text[^>]*>([^<]+)<', html)
    assert labels == ["r1", "r2", "r3", "r5"]
    plot_x = float(re.search(r'<line x1="(\d+)"', html).group(1))  # type: ignore[union-attr]
    assert plot_x >= len(long_slot) * 6.5  # the lane label ends before the bars begin
    assert 'td class="worker"' in html and "td.worker,td.device{white-space:nowrap}" in html


def test_the_console_table_never_breaks_a_worker_name() -> None:
    console = Console(record=True, width=90)
    console.print(outcome_table([outcome(1, Status.SUCCEEDED, "lab-a@vm/0")]))
    assert "lab-a@vm" in console.export_text()
