"""The device tasks that labq workers run.

``celery -A tasks worker`` finds the app as ``tasks.app``. It is built on
first use from the environment and ``config/``, not at import time, so
importing a task module to name a task never reads settings. Every module in
this package is registered on the workers; a lab adds its own beside these.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labq.app import LabqCelery


@cache
def _app() -> LabqCelery:
    from labq.app import create_app

    return create_app()


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return _app()
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
