"""A run's failed tasks whose devices were held for its owner (``hold_on_failure``).

The worker that held them wrote each reservation's id and token into the
run's ``holds`` hash (:mod:`labq.worker.holds`). The testscript reads the
entries of tasks that just failed, keeps each token in the user's token
file (:func:`labq.devices.reservations.remember`), and says on stderr which
devices are held, until when, and how to free them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from labq.devices.reservations import Reservation, remember
from labq.keys import holds_key

log = logging.getLogger(__name__)


def announce_holds(client: redis.Redis, run_id: str, task_ids: Sequence[str],
                   state_dir: Path) -> list[Reservation]:
    """The reservations made for ``task_ids`` (failed tasks of ``run_id``), announced."""
    if not task_ids:
        return []
    try:
        raws: list[Any] = client.hmget(holds_key(run_id), list(task_ids))
    except redis.RedisError as exc:  # the holds stand; labq reservations lists them
        log.warning("run %s: could not read its held devices: %s", run_id, exc)
        return []
    held = []
    for task_id, raw in zip(task_ids, raws, strict=True):
        if not raw:
            continue
        entry = json.loads(raw)
        r = Reservation(str(entry["id"]), str(entry.get("owner", "")), "",
                        tuple(entry.get("devices", ())), time.time(), float(entry["until"]),
                        str(entry["token"]), task_id)
        held.append(r)
        try:
            remember(state_dir, r)
        except OSError as exc:
            log.warning("token of reservation %s not kept (%s): it is %s", r.id, exc, r.token)
        devices = ", ".join(r.devices)
        until = time.strftime("%H:%M:%S", time.localtime(r.expires_at))
        print(f"labq: task {task_id} failed: {devices} held for {r.owner} until {until} "
              f"(reservation {r.id}); 'labq release {r.devices[0]}' frees it",
              file=sys.stderr, flush=True)
    return held
