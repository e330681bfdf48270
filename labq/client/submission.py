"""What a submit checks before anything is queued: the task, its limits and
its arguments. Every refusal names the offending value."""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from labq.devices.pick import encode
from labq.errors import SubmitError, TimeLimitError
from labq.settings import Settings


def script_name() -> str:
    """The testscript's file name, carried by every task for Flower's filter."""
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"


def check_limits(soft: float | None, hard: float | None, settings: Settings) -> None:
    """Refuse limits that cannot work, naming the values."""
    for name, value in (("soft_time_limit", soft), ("time_limit", hard)):
        if value is not None and value <= 0:
            raise TimeLimitError(f"{name}={value!r}: must be a positive number of seconds")
    eff_soft = settings.soft_time_limit if soft is None else soft
    eff_hard = settings.time_limit if hard is None else hard
    if eff_soft >= eff_hard:
        raise TimeLimitError(
            f"soft_time_limit={eff_soft!r} must be below time_limit={eff_hard!r}, "
            "or the soft limit never fires")
    if eff_hard > settings.max_time_limit:
        raise TimeLimitError(
            f"time_limit={eff_hard!r} exceeds max_time_limit={settings.max_time_limit!r}: "
            "the broker would hand the task to a second worker while it still runs "
            "(raise LABQ_MAX_TIME_LIMIT on workers and clients alike)")


def task_name(app: Any, task: Any) -> str:
    """The registered name of ``task`` (a task object or a name)."""
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str):
        raise SubmitError(f"{task!r} is not a Celery task or a task name")
    if name not in app.tasks:
        app.loader.import_default_modules()
    if name not in app.tasks:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise SubmitError(f"unknown task {name!r}; tasks/ registers: {', '.join(known)}")
    return name


def first(*values: float | None) -> float | None:
    """The first value that is set: the call's limit, the run's, the task's."""
    return next((v for v in values if v is not None), None)


def check_json(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse an argument that JSON cannot carry, naming it."""
    for key, value in [*((f"args[{i}]", a) for i, a in enumerate(args)), *kwargs.items()]:
        try:
            json.dumps(encode(value))  # a labq.Pick travels as its JSON form
        except (TypeError, ValueError) as exc:
            raise SubmitError(
                f"{name}: argument {key}={value!r} is not JSON-serialisable ({exc}); "
                "labq sends JSON only") from exc


def default_owner() -> str:
    """The OS user running the testscript."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's uid)
        return f"uid{os.getuid()}"


def check_owner(owner: str | None) -> str:
    """``owner``, else the OS user; refused when blank or not one printable line."""
    if owner is None:
        return default_owner()
    if not isinstance(owner, str) or not owner.strip() or not owner.isprintable():
        raise SubmitError(f"owner={owner!r}: must be a non-empty name on one line")
    return owner.strip()
