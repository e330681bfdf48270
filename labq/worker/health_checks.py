"""What a health check's end does to its device (``@device_task(health_check=True)``).

A check that returned makes the device ``good``; one that raised, or could
not connect or log in, makes it ``bad``, with the error as the reason and the
check's task id as "by". A device a person has in maintenance or retired
keeps that state: the check only reports. A ``bad`` device is logged at
WARNING.
"""

from __future__ import annotations

import logging

from labq.devices.health import Health, HealthBook
from labq.devices.lease import Leases

log = logging.getLogger(__name__)

#: States a check leaves alone: a person set them.
KEPT = frozenset({Health.MAINTENANCE, Health.RETIRED})


def record_check(leases: Leases, device: str, task_id: str,
                 failure: BaseException | None) -> Health | None:
    """Record the check's result on ``device``; the new state (None if kept or not written)."""
    book = HealthBook(leases.client, leases)
    try:
        current = book.get([device])[device].state
        if current in KEPT:
            return None
        if failure is None:
            book.set(device, Health.GOOD, reason="health check passed", by=task_id)
            return Health.GOOD
        reason = f"health check failed: {type(failure).__name__}: {str(failure)[:200]}"
        book.set(device, Health.BAD, reason=reason, by=task_id)
    except Exception:  # the check's own outcome still tells; the state stays as it was
        log.exception("health check %s: the health of %s was not recorded", task_id, device)
        return None
    log.warning("device %s is bad: %s (check %s)", device, reason, task_id)
    return Health.BAD
