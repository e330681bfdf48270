"""Connection drivers: one uniform session over netmiko and unicon.

A task sees only :class:`Session`: ``device``, ``execute(cmd, timeout=None)``,
``configure(lines)`` and ``native``. The driver is chosen from the device:
``custom.labq.driver`` when set, ``unicon`` when a connection names a
``command`` or the unicon class, else ``netmiko`` for ssh.
"""

from __future__ import annotations

# Each driver registers itself; neither imports its library until it connects.
from labq.devices.drivers import netmiko, unicon  # noqa: F401
from labq.devices.drivers.base import Session, choose_driver, drivers, open_session

__all__ = ["Session", "choose_driver", "drivers", "open_session"]
