from __future__ import annotations

from datetime import datetime, timezone

import pytest

from labq.outcome import Outcome, RemoteError, Status, outcome_from_meta, status_of

BASE = Outcome(task_id="t1", task="tasks.device.execute", device="r1", status=Status.QUEUED,
               queued_at=datetime(2026, 1, 1, tzinfo=timezone.utc))


def failure(exc_type: str, *message: object) -> dict[str, object]:
    return {"status": "FAILURE", "traceback": "Traceback ...",
            "result": {"exc_type": exc_type, "exc_message": list(message), "exc_module": "x"},
            "date_done": "2026-01-01T00:00:05.000000+00:00", "worker": "lab-a@h"}


@pytest.mark.parametrize(("meta", "status"), [
    ({"status": "SUCCESS"}, Status.SUCCEEDED),
    ({"status": "STARTED"}, Status.RUNNING),
    ({"status": "RETRY"}, Status.QUEUED),
    ({"status": "PENDING"}, Status.QUEUED),
    ({"status": "REVOKED"}, Status.CANCELLED),
    (failure("RuntimeError", "x"), Status.FAILED),
    (failure("SoftTimeLimitExceeded"), Status.SOFT_TIMEOUT),
    (failure("SoftTimeout", "m", {"show version": "out"}), Status.SOFT_TIMEOUT),
    (failure("TimeLimitExceeded", 3), Status.HARD_TIMEOUT),
    (failure("TaskCancelled", "run cancelled"), Status.CANCELLED),
    (failure("WorkerLostError", "gone"), Status.LOST),
])
def test_celery_states_map_to_statuses(meta: dict[str, object], status: Status) -> None:
    assert status_of(meta) is status


def test_final_statuses() -> None:
    assert {s for s in Status if not s.final} == {Status.QUEUED, Status.RUNNING}
    assert Status("soft_timeout") is Status.SOFT_TIMEOUT and str(Status.LOST) == "lost"


def test_a_failure_becomes_a_remote_error_without_unpickling() -> None:
    out = outcome_from_meta(BASE, failure("DeviceUnreachable", "device 'r1' at 10.0.0.1:22"),
                            {"at": 1767225601.0, "worker": "lab-a@h", "slot": "lab-a@h/3"})
    assert out.status is Status.FAILED
    assert out.error == RemoteError("DeviceUnreachable", "device 'r1' at 10.0.0.1:22",
                                    "Traceback ...")
    assert out.worker == "lab-a@h" and out.slot == "lab-a@h/3"
    assert out.started_at == datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert out.duration == pytest.approx(4.0)


def test_soft_timeout_keeps_the_partial_output() -> None:
    out = outcome_from_meta(BASE, failure("SoftTimeout", "soft", {"show clock": "12:00"}), None)
    assert out.status is Status.SOFT_TIMEOUT and out.value == {"show clock": "12:00"}


def test_started_without_result_is_running() -> None:
    out = outcome_from_meta(BASE, None, {"at": 1767225601.0, "worker": "w", "slot": "w/0"})
    assert out.status is Status.RUNNING and out.finished_at is None and out.duration is None


@pytest.mark.parametrize("partial", [{}, {"show clock": "12:00"}])
def test_a_soft_timeouts_message_carries_no_partial_output(partial: dict[str, str]) -> None:
    # The partial output is the outcome's value; the message stays the message
    # (it used to end in a stray "{}" in the console, the table and the report).
    out = outcome_from_meta(BASE, failure("SoftTimeout", "soft time limit reached on 'r5'",
                                          partial), None)
    assert out.error is not None and out.error.message == "soft time limit reached on 'r5'"
    assert out.value == partial


def test_a_soft_timeouts_repr_is_its_message() -> None:
    # Flower and the worker log show repr() of the exception.
    from labq.errors import SoftTimeout

    err = SoftTimeout("soft time limit reached on 'r5'", {})
    assert repr(err) == "SoftTimeout(\"soft time limit reached on 'r5'\")"
    assert SoftTimeout(*err.args).partial == {}


def test_started_without_a_start_record_is_a_parked_waiter_queued() -> None:
    out = outcome_from_meta(BASE, {"status": "STARTED"}, None)
    assert (out.status, out.worker) == (Status.QUEUED, None)
    started = outcome_from_meta(BASE, {"status": "STARTED"}, {"at": 1767225601.0, "worker": "w"})
    assert (started.status, started.worker) == (Status.RUNNING, "w")
