"""``hold_on_failure``: a failed task's devices stay reserved for its run's owner.

A run made with ``labq.Run(..., hold_on_failure="30m")`` tags each task with
the hold's length (:data:`labq.keys.HOLD_KWARG`). When such a device task
fails in its child (an error, a soft timeout, a device that refused it),
its leases become a person's reservation in one atomic step
(:meth:`labq.devices.reservations.Reservations.hold`), so no other task
slips in between. The note names the failed task; the reservation's id and
token go into the run's ``holds`` hash (:func:`labq.keys.holds_key`), where
the testscript reads them and keeps the token for ``labq release``.

Not held: a cancel (nothing failed), a retry (it waits), and a hard kill:
the main process frees a killed child's leases at once, whatever the run
asked, as the kill must leave nothing behind.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.exceptions import Ignore, Retry

from labq.devices.lease import Leases
from labq.devices.reservations import Reservations
from labq.errors import TaskCancelled
from labq.keys import cancel_key, holds_key

log = logging.getLogger(__name__)

#: Exceptions that are no failure of the task's devices.
NOT_FAILURES = (TaskCancelled, Retry, Ignore, KeyboardInterrupt, SystemExit)


def hold_after(task: Any, leases: Leases, holder: str, failure: BaseException | None) -> bool:
    """If ``failure`` is a failure and the task's run asked for it, turn
    ``holder``'s leases into a reservation for the run's owner; True if any
    device is now held (nothing is left to release)."""
    seconds = getattr(task.request, "labq_hold", None)
    if failure is None or not seconds or isinstance(failure, NOT_FAILURES):
        return False
    owner = str(getattr(task.request, "labq_owner", None) or "unknown")
    run_id = getattr(task.request, "labq_run_id", None)
    try:
        # A cancel interrupts with the soft limit's signal: that is no failure.
        if run_id and leases.client.exists(cancel_key(run_id)):
            return False
    except Exception as exc:
        log.warning("task %s: could not read its run's cancel flag (%s); releasing", holder, exc)
        return False
    note = (f"held after task {holder} ({task.name}) failed: "
            f"{type(failure).__name__}: {str(failure)[:120]}")
    try:
        held = Reservations(leases.client, leases).hold(
            holder, float(seconds), owner=owner, note=note, task=holder)
    except Exception:  # the device must not stay leased to a task that ended
        log.exception("could not hold the devices of failed task %s; releasing them", holder)
        return False
    if held is None:
        return False
    log.warning("task %s failed: %s held for %s for %.0f s (reservation %s)",
                holder, ", ".join(held.devices), owner, float(seconds), held.id)
    if run_id:
        try:
            pipe = leases.client.pipeline(transaction=False)
            pipe.hset(holds_key(run_id), holder, json.dumps({
                "id": held.id, "token": held.token, "devices": list(held.devices),
                "until": held.expires_at, "owner": owner}))
            pipe.expire(holds_key(run_id), int(task.app.labq_settings.run_retention))
            pipe.execute()
        except Exception as exc:  # the reservation stands; --force releases it
            log.warning("hold %s not recorded for run %s: %s", held.id, run_id, exc)
    return True
