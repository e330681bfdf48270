from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rich.console import Console

from labq.client.progress import Progress
from labq.client.report import outcome_table, render
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
