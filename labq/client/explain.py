"""Remote errors that name their real cause, added where the worker could not.

A worker that does not know a task (a module added under ``tasks/`` after
the workers started) stores Celery's bare ``NotRegistered`` with no worker
and no time: the run asks the workers which of them lack the task and says
what to do. A hard time limit is stored as ``TimeLimitExceeded`` with the
limit alone as its message: the run says what happened.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from labq.outcome import Outcome, RemoteError

#: Seconds the workers get to say which tasks they know.
INSPECT_TIMEOUT = 1.0


def lacking(app: Any, task: str) -> list[str]:
    """The workers that answer and do not register ``task``."""
    try:
        registered = app.control.inspect(timeout=INSPECT_TIMEOUT).registered() or {}
    except Exception:  # no answer at all: the message below still helps
        return []
    return sorted(w for w, names in registered.items() if task not in (names or []))


def explain(app: Any, outcome: Outcome, asked: dict[str, list[str]]) -> Outcome:
    """``outcome`` with a message that names the cause, where labq knows one.

    ``asked`` keeps the workers' answer per task name: a run of a thousand
    unknown tasks asks them once, not a thousand times.
    """
    error = outcome.error
    if error is not None and error.type == "TimeLimitExceeded":
        # Celery's message is the limit alone ("3").
        return replace(outcome, error=RemoteError(error.type, (
            f"hard time limit ({error.message} s) reached: the task and every process it "
            "started were killed"), error.traceback))
    if error is None or error.type != "NotRegistered":
        return outcome
    if outcome.task not in asked:
        asked[outcome.task] = lacking(app, outcome.task)
    workers = asked[outcome.task]
    who = (f"workers {', '.join(workers)} do not know it" if workers
           else "the worker that took it does not know it")
    return replace(outcome, error=RemoteError(error.type, (
        f"task {outcome.task!r} is not registered on the workers: {who}. Restart the "
        "workers after adding a module under tasks/ (every module there is loaded at "
        "start), or check that the module imports cleanly on the lab hosts"),
        error.traceback))
