"""Reservations: device leases held by a person, with an owner, a note, a token and an expiry.

A reservation is a lease like a task's, under the holder ``resv:<id>``, so
it waits in the same lines, by the same first-come rule, and every lease
script treats it the same way, with two differences (see
:mod:`labq.devices.lease_scripts`):

- it takes every session of its device: while a person holds a device no
  task is granted it, and a :class:`~labq.devices.pick.Pick` takes another
  candidate;
- a person waiting in a device's line holds up every task behind them, so
  tasks that come later cannot keep a device with several sessions from
  ever being free for the person.

Its record (owner, note, the token's SHA-256, a failed task's id) is the
lease's info; its expiry is the lease's. Each worker's sweep
(:class:`labq.worker.parking.Waker`) releases expired reservations every
second, waking their devices' waiters at once.

Only the holder of the token releases or extends a reservation; ``force``
releases anyone's, and is logged (:data:`labq.keys.RESERVATION_LOG_KEY`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from labq.devices import lease_scripts as scripts
from labq.devices.lease import Grant, Leases, SetGrant, SetWait, Wait, masked_url
from labq.errors import BrokerUnavailable, ReservationError
from labq.keys import (
    DEVICES_KEY,
    PREFIX,
    RESERVATION_HOLDER,
    RESERVATION_LOG_KEY,
    RESERVATION_LOG_MAXLEN,
)
from labq.redis_client import text, unavailable

#: Seconds between two polls of a reservation that waits its turn.
POLL = 0.5


@dataclass(frozen=True)
class Reservation:
    """A person's hold on ``devices`` until ``expires_at`` (epoch s, Redis clock)."""

    id: str
    owner: str
    note: str
    devices: tuple[str, ...]
    since: float
    expires_at: float
    #: The secret that releases it: only its maker knows it (empty when listed).
    token: str = ""
    #: The failed task whose devices these were (``hold_on_failure``).
    task: str = ""

    @property
    def holder(self) -> str:
        return RESERVATION_HOLDER + self.id


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id() -> tuple[str, str]:
    """A fresh reservation id (public) and token (secret)."""
    return secrets.token_hex(4), secrets.token_urlsafe(16)


class Reservations:
    """People's reservations on one Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, leases: Leases | None = None) -> None:
        self.client = client
        self.leases = leases or Leases(client)
        self._hold = client.register_script(scripts.HOLD)
        self._extend = client.register_script(scripts.EXTEND)
        self._expire = client.register_script(scripts.EXPIRE_RESERVATIONS)

    def _run(self, script: Any, *args: object) -> Any:
        try:
            return script(keys=[DEVICES_KEY], args=[PREFIX, int(self.leases.waiter_ttl * 1000),
                                                     *args])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise BrokerUnavailable(f"reservations: {unavailable(masked_url(self.client), exc)}") from exc

    # -- making one ---------------------------------------------------------

    def reserve(self, slots: Sequence[Sequence[str]], *, owner: str, note: str, seconds: float,
                wait: bool = True, on_wait: Callable[[Wait | SetWait], None] | None = None,
                poll: float = POLL) -> Reservation:
        """Reserve one device of each slot (a slot of one name: that device),
        all or none, for ``seconds``. With ``wait`` it waits its turn in the
        devices' lines, calling ``on_wait`` at each poll; without, a busy
        device raises :class:`ReservationError` at once. An interrupt
        (Ctrl-C) leaves the lines."""
        rid, token = new_id()
        holder = RESERVATION_HOLDER + rid
        record = json.dumps({"task": "reservation", "worker": "", "owner": owner, "note": note,
                             "id": rid, "token": token_digest(token)})
        single = len(slots) == 1 and len(slots[0]) == 1
        since: float | None = None
        try:
            while True:
                # max_sessions 1: granted only when nobody holds the device at all.
                answer: Grant | Wait | SetGrant | SetWait
                if single:
                    answer = self.leases.acquire(slots[0][0], holder, 1, task=record,
                                                 ttl=seconds, since=since)
                else:
                    answer = self.leases.acquire_set([[(d, 1) for d in s] for s in slots],
                                                     holder, task=record, ttl=seconds,
                                                     since=since)
                if isinstance(answer, (Grant, SetGrant)):
                    devices = (answer.device,) if isinstance(answer, Grant) else answer.devices
                    return Reservation(rid, owner, note, tuple(devices), time.time(),
                                       answer.expires_at, token)
                since = answer.waiting_since
                if not wait:
                    raise ReservationError(self._busy(slots, answer))
                if on_wait is not None:
                    on_wait(answer)
                time.sleep(poll)
        except BaseException:
            self.leases.release_all(holder)  # leave every line
            raise

    def _busy(self, slots: Sequence[Sequence[str]], answer: Wait | SetWait) -> str:
        """Why a --no-wait reservation is refused: who holds the devices."""
        people = {r.holder: r for r in self.all()}
        held = ", ".join(f"{people[h].owner}'s reservation {people[h].id}" if h in people
                         else f"task {h}" for h in answer.holders[:4]) or "a waiter ahead"
        names = ", ".join(sorted({d for s in slots for d in s}))
        return (f"{names}: busy (held by {held}) and --no-wait was given; "
                "without it, labq reserve waits its turn")

    def hold(self, task_holder: str, seconds: float, *, owner: str, note: str,
             task: str) -> Reservation | None:
        """Turn the live leases of ``task_holder`` (a failed task) into a
        reservation for ``owner``, in one step; None if it held nothing."""
        rid, token = new_id()
        record = {"task": "reservation", "worker": "", "owner": owner, "note": note, "id": rid,
                  "token": token_digest(token), "failed_task": task}
        devices = self._run(self._hold, task_holder, RESERVATION_HOLDER + rid,
                            int(seconds * 1000), json.dumps(record))
        if not devices:
            return None
        return Reservation(rid, owner, note, tuple(text(d) for d in devices), time.time(),
                           time.time() + seconds, token, task)

    # -- reading them -------------------------------------------------------

    def expire(self, limit: int = 100) -> list[str]:
        """Release the reservations whose time is up; their ids."""
        return [text(r) for r in self._run(self._expire, limit)]

    def all(self) -> list[Reservation]:
        """Every live reservation, soonest to end first (expired ones released first)."""
        self.expire()
        found: dict[str, Reservation] = {}
        for dev in self.leases.snapshot():
            for h in dev.holders:
                if not h.reservation or h.expires_at <= time.time():
                    continue
                found[h.reservation] = Reservation(
                    h.reservation, h.owner, h.note, h.devices or (dev.device,), h.since,
                    h.expires_at, task=h.failed_task)
        return sorted(found.values(), key=lambda r: (r.expires_at, r.id))

    def waiting(self) -> list[tuple[str, str, int]]:
        """People waiting in devices' lines: (reservation id, device, position)."""
        return [(w.holder[len(RESERVATION_HOLDER):], dev.device, w.position)
                for dev in self.leases.snapshot() for w in dev.waiters
                if w.holder.startswith(RESERVATION_HOLDER)]

    def on(self, device: str) -> Reservation | None:
        """The reservation that holds ``device``, if any."""
        return next((r for r in self.all() if device in r.devices), None)

    def _info(self, device: str, holder: str) -> dict[str, Any]:
        raw = self.client.hget(f"{PREFIX}lease:{device}:info", holder)
        return json.loads(raw) if raw else {}

    # -- ending or extending one ----------------------------------------------

    def _authorised(self, device: str, token: str | None, force: bool,
                    what: str) -> tuple[Reservation, bool]:
        """The reservation on ``device``, and whether ``token`` is its own;
        refused unless it is, or ``force``."""
        found = self.on(device)
        if found is None:
            raise ReservationError(f"device {device!r} holds no reservation; "
                                   "labq reservations lists those that do")
        digest = self._info(found.devices[0], found.holder).get("token", "")
        own = bool(token) and secrets.compare_digest(token_digest(token or ""), str(digest))
        if not own and not force:
            given = "no token was given" if not token else f"token {token!r} is not its token"
            raise ReservationError(
                f"{device!r} is reserved by {found.owner!r} (reservation {found.id}) until "
                f"{_clock(found.expires_at)}: {given}; only its token {what} it"
                + (", or --force" if what == "releases" else ""))
        return found, own

    def release(self, device: str, *, token: str | None = None, force: bool = False,
                by: str = "") -> Reservation:
        """End the reservation on ``device``: with its token, or ``force``
        (logged with ``by`` and the time)."""
        found, own = self._authorised(device, token, force, "releases")
        if not own:  # forced
            self.client.xadd(RESERVATION_LOG_KEY, {
                "at": time.time(), "by": by, "id": found.id, "owner": found.owner,
                "devices": ",".join(found.devices), "note": found.note, "action": "force-release",
            }, maxlen=RESERVATION_LOG_MAXLEN, approximate=True)
        self.leases.release_all(found.holder)
        return found

    def extend(self, device: str, seconds: float, *, token: str | None) -> Reservation:
        """Move the end of the reservation on ``device`` ``seconds`` later (its token only)."""
        found, _ = self._authorised(device, token, False, "extends")
        until = int(self._run(self._extend, found.holder, int(seconds * 1000)))
        if not until:
            raise ReservationError(f"reservation {found.id} on {device!r} ended meanwhile")
        return Reservation(found.id, found.owner, found.note, found.devices, found.since,
                           until / 1000)

    def force_log(self, count: int = 5) -> list[dict[str, str]]:
        """The last ``count`` forced releases, newest first."""
        entries: Any = self.client.xrevrange(RESERVATION_LOG_KEY, count=count)
        return [{text(k): text(v) for k, v in (fields or {}).items()}
                for _, fields in entries or []]


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))





# -- the tokens a user holds ----------------------------------------------------

#: Where ``labq reserve`` (and a run's holds) keep the user's tokens, under ``state_dir``.
TOKEN_FILE = "reservations.json"


def remember(state_dir: Path, reservation: Reservation) -> Path:
    """Keep ``reservation``'s token in the user's token file (mode 0600), so
    that ``labq release`` and ``labq extend`` find it."""
    path = Path(state_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    known = _tokens(path)
    known[reservation.id] = {"token": reservation.token, "devices": list(reservation.devices),
                             "until": reservation.expires_at}
    now = time.time()
    known = {k: v for k, v in known.items() if float(v.get("until", now)) > now - 86400}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=1))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def recall(state_dir: Path, device: str) -> str | None:
    """The token of the newest reservation of ``device`` in the user's token file."""
    entries = [v for v in _tokens(Path(state_dir) / TOKEN_FILE).values()
               if device in v.get("devices", ())]
    entries.sort(key=lambda v: float(v.get("until", 0)))
    return str(entries[-1]["token"]) if entries else None


def _tokens(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
