"""Send each device task to its device's queue, checked at submit time.

The router runs in the client when a task is published: an unknown device is
refused there, before anything is queued, with the closest names it knows.
A task with Picks or several roles goes to the queue that can serve all of
its roles with the most candidates (:mod:`labq.devices.selection`); the
worker moves it to another such queue if its devices are free there first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labq.devices.selection import plan, role_arguments
from labq.devices.testbed import Testbed
from labq.devices.testbed_yaml import load_testbed


class DeviceRouter:
    """A Celery router: device tasks go to the device's ``custom.labq.queue``,
    or to the default queue when the device names none."""

    def __init__(self, testbed_path: Path, default_queue: str) -> None:
        self.testbed_path = Path(testbed_path)
        self.default_queue = default_queue
        self._testbed: Testbed | None = None
        self._mtime = -1.0

    @property
    def testbed(self) -> Testbed:
        # Reload when the file changes, so a long-lived client sees new devices.
        mtime = self.testbed_path.stat().st_mtime if self.testbed_path.exists() else 0.0
        if self._testbed is None or mtime != self._mtime:
            self._testbed = load_testbed(self.testbed_path)
            self._mtime = mtime
        return self._testbed

    def __call__(self, name: str, args: Any, kwargs: Any, options: Any,
                 task: Any = None, **_: Any) -> dict[str, Any] | None:
        if not getattr(task, "labq_device_task", False):
            return None
        roles = getattr(task, "labq_roles", ("device",))
        device = (kwargs or {}).get("device")
        if roles == ("device",) and isinstance(device, str):
            queue = self.testbed.device(device).queue or self.default_queue
        elif roles == ("device",) and device is None:
            from labq.errors import UnknownDevice

            raise UnknownDevice("<missing device= argument>", str(self.testbed_path), [])
        else:
            chosen = role_arguments(roles, kwargs or {}, name)
            queue = plan(self.testbed, chosen, self.default_queue, name).preferred
        return {"queue": queue, "routing_key": queue}
