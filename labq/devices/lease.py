"""Device leases in Redis: at most ``max_sessions`` holders per device.

Every change runs in one Lua script, so a check and its write can never
interleave with another worker's. Times come from Redis's own clock (``TIME``
inside the scripts): workers' clocks may disagree, Redis's is the only one.

The keys (a device's lease and wait sets, each holder's devices, the set of
devices in use, the parked waiters) are in :mod:`labq.keys`.

A waiter that gives its prefork slot back parks its retry message here
(:meth:`Leases.park`, used by :mod:`labq.worker.parking`): every script that
frees a session or shortens a line pushes the parked retry that its change
serves onto the front of its queue, in the same atomic step.

Expired holders and waiters that stopped polling are purged by the next
script that touches their device; every lease and line key also carries a
PEXPIRE, so a device nobody touches again leaves nothing behind (a parked
message never expires: it leaves when it is woken or its run cancelled). The scripts derive the keys
of other devices and holders from names, so they need a single (non-cluster)
Redis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from labq.devices import lease_scripts as scripts
from labq.errors import BrokerUnavailable, DeviceBusy, DeviceUnavailable, LeaseError
from labq.keys import (
    DEVICES_KEY,
    HEALTH_KEY,
    HEALTH_LOG_MAXLEN,
    HEALTH_RECORDS_KEY,
    PARKED_KEY,
    PREFIX,
    RESERVATION_HOLDER,
    RESERVED_SUFFIXES,
    health_log_key,
    held_key,
    lease_keys,
    parked_key,
    waiting_key,
    watch_key,
)
from labq.redis_client import text, unavailable
from labq.settings import mask_url

log = logging.getLogger(__name__)

#: A topology or Pick that has waited this long reserves the devices it is
#: first in line for; before, it holds nobody up (see ``ACQUIRE_SET``).
RESERVE_AFTER = 5.0


@dataclass(frozen=True)
class Grant:
    """The holder has the device until ``expires_at`` (epoch s, Redis clock)."""

    device: str
    holder: str
    expires_at: float


@dataclass(frozen=True)
class Wait:
    """The device is busy; the holder is waiter number ``position``.

    ``waited`` is measured on Redis's clock. Pass ``waiting_since`` back as
    ``acquire(since=...)`` after a long gap, to keep the place in line.
    """

    position: int
    waiting_since: float
    holders: list[str]
    device: str = ""
    waited: float = 0.0

    def busy(self) -> DeviceBusy:
        """The error to raise once the task's lease timeout has passed."""
        return DeviceBusy(self.device, self.waited, self.holders)


@dataclass(frozen=True)
class SetGrant:
    """The holder has one device per slot (``devices``, in slot order) until
    ``expires_at``; each is renewed and released as a single lease is."""

    devices: tuple[str, ...]
    holder: str
    expires_at: float

    def grants(self) -> list[Grant]:
        return [Grant(d, self.holder, self.expires_at) for d in self.devices]


@dataclass(frozen=True)
class SetWait:
    """Not every slot can be filled yet; the holder waits for its candidates
    (in their lines once it reserves them, see ``ACQUIRE_SET``)."""

    waiting_since: float
    waited: float
    holders: list[str]
    candidates: tuple[str, ...]

    def busy(self) -> DeviceBusy:
        shown = ", ".join(self.candidates[:6]) + (" ..." if len(self.candidates) > 6 else "")
        return DeviceBusy(shown, self.waited, self.holders)


@dataclass(frozen=True)
class Holder:
    holder: str
    task: str
    worker: str
    since: float
    expires_at: float
    #: Every device the holder leased in the same step (a topology), in role order.
    devices: tuple[str, ...] = ()
    #: A person's reservation (holder ``resv:<id>``): for whom, and why.
    owner: str = ""
    note: str = ""
    #: A ``hold_on_failure`` reservation's failed task.
    failed_task: str = ""

    @property
    def reservation(self) -> str:
        """The reservation's id if a person holds this lease, else ``""``."""
        return self.holder[len(RESERVATION_HOLDER):] if self.holder.startswith(
            RESERVATION_HOLDER) else ""


@dataclass(frozen=True)
class Waiter:
    holder: str
    position: int
    since: float


@dataclass(frozen=True)
class DeviceLeases:
    device: str
    holders: list[Holder] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)


def _check(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise LeaseError(f"{kind} name must be a non-empty string, got {name!r}")
    if kind == "device" and name.endswith(RESERVED_SUFFIXES):
        raise LeaseError(f"device name {name!r} ends in a reserved suffix {RESERVED_SUFFIXES}")


def _ms(what: str, seconds: float) -> int:
    ms = int(seconds * 1000)
    if ms < 1:
        raise LeaseError(f"{what} must be at least 0.001 s, got {seconds!r}")
    return ms


def masked_url(client: redis.Redis) -> str:
    """The client's address, never with its password."""
    kw = client.connection_pool.connection_kwargs
    if kw.get("path"):
        return f"unix://{kw['path']}"
    # the password is never put in, so mask_url cannot miss any part of it
    auth = f"{kw.get('username') or ''}:****@" if kw.get("password") else ""
    return mask_url(f"redis://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
                    f"/{kw.get('db', 0)}")


class Leases:
    """Device leases on one Redis; safe to share between threads."""

    def __init__(self, client: redis.Redis, *, ttl: float = 15.0,
                 waiter_ttl: float = 15.0) -> None:
        self.client = client
        _ms("ttl", ttl), _ms("waiter_ttl", waiter_ttl)
        self.ttl, self.waiter_ttl = ttl, waiter_ttl
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)
        self._abandon = client.register_script(scripts.ABANDON)
        self._release_all = client.register_script(scripts.RELEASE_ALL)
        self._state = client.register_script(scripts.STATE)
        self._acquire_set = client.register_script(scripts.ACQUIRE_SET)
        self._free = client.register_script(scripts.FREE)
        self._park = client.register_script(scripts.PARK)
        self._wake_due = client.register_script(scripts.WAKE_DUE)
        self._unpark = client.register_script(scripts.UNPARK)
        self._set_health = client.register_script(scripts.SET_HEALTH)

    def _argv(self, *args: object) -> list[object]:
        return [PREFIX, int(self.waiter_ttl * 1000), *args]

    def _run(self, script: Any, keys: Sequence[str], *args: object) -> Any:
        try:
            return script(keys=list(keys), args=self._argv(*args))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise BrokerUnavailable(
                f"device leases: {unavailable(masked_url(self.client), exc)}") from exc

    def acquire(self, device: str, holder: str, max_sessions: int, *, task: str = "",
                worker: str = "", ttl: float | None = None,
                since: float | None = None, checking: bool = False) -> Grant | Wait:
        """Take a lease on ``device`` if its turn has come, else join/refresh the line.

        A holder that already holds ``device`` gets its lease renewed. ``since``
        (epoch s) is the first-wait time to use if ``holder`` is not in line.
        """
        keys, args = self._acquire_input(device, holder, max_sessions, task=task,
                                         worker=worker, ttl=ttl, since=since, checking=checking)
        return self.acquire_answer(device, holder, self._run(self._acquire, keys, *args))

    def queue_acquire(self, pipe: Any, device: str, holder: str, max_sessions: int, *,
                      task: str = "", worker: str = "", checking: bool = False) -> None:
        """Queue :meth:`acquire` as a bare ``EVALSHA`` on another client's ``pipe``
        (same Redis), to save a round trip; read its reply with
        :meth:`acquire_answer`. The reply is ``NoScriptError`` until this
        process has run the script once on that Redis: then call ``acquire``.
        """
        keys, args = self._acquire_input(device, holder, max_sessions, task=task, worker=worker,
                                         checking=checking)
        pipe.evalsha(self._acquire.sha, len(keys), *keys, *self._argv(*args))

    def acquire_answer(self, device: str, holder: str, reply: Any) -> Grant | Wait:
        """The :class:`Grant` or :class:`Wait` that an acquire's ``reply`` means;
        :class:`DeviceUnavailable` if the device's health blocks new work."""
        if int(reply[0]) == -1:
            raise unavailable_device(reply)
        if int(reply[0]) == 1:
            return Grant(device, holder, int(reply[1]) / 1000)
        first, now = float(text(reply[2])), int(reply[3])
        return Wait(position=int(reply[1]), waiting_since=first / 1000,
                    holders=[text(h) for h in reply[4]], device=device,
                    waited=max(0.0, (now - first) / 1000))

    def _acquire_input(self, device: str, holder: str, max_sessions: int, *, task: str,
                       worker: str, ttl: float | None = None, since: float | None = None,
                       checking: bool = False) -> tuple[list[str], list[object]]:
        _check("device", device)
        _check("holder", holder)
        if not isinstance(max_sessions, int) or max_sessions < 1:
            raise LeaseError(f"max_sessions of {device!r} must be >= 1, got {max_sessions!r}")
        ttl_ms = _ms("ttl", self.ttl if ttl is None else ttl)
        since_ms = int(since * 1000) if since else 0
        keys = [*lease_keys(device), held_key(holder), waiting_key(holder), DEVICES_KEY]
        # checking: a health check, which may lease a device whose health blocks.
        return keys, [device, holder, max_sessions, ttl_ms, task, worker, since_ms,
                      1 if checking else 0]

    def acquire_set(self, slots: Sequence[Sequence[tuple[str, int]]], holder: str, *,
                    task: str = "", worker: str = "", ttl: float | None = None,
                    since: float | None = None) -> SetGrant | SetWait:
        """One distinct device per slot, from its ``(device, max_sessions)``
        candidates, all leased in one atomic step, or none.

        A waiter holds nobody up for its first :data:`RESERVE_AFTER`
        seconds (pass its ``since`` back on every try); after that it is in
        every candidate's line, and no later task takes those devices from
        it. Costs O(candidates), whatever the lab's size.
        """
        _check("holder", holder)
        args: list[object] = [holder, _ms("ttl", self.ttl if ttl is None else ttl), task,
                              worker, int(since * 1000) if since else 0,
                              int(RESERVE_AFTER * 1000), len(slots)]
        names: list[str] = []
        for slot in slots:
            if not slot:
                raise LeaseError(f"a slot of {holder!r} has no candidate device")
            args.append(len(slot))
            for device, max_sessions in slot:
                _check("device", device)
                if not isinstance(max_sessions, int) or max_sessions < 1:
                    raise LeaseError(f"max_sessions of {device!r} must be >= 1, "
                                     f"got {max_sessions!r}")
                args += [device, max_sessions]
                names.append(device)
        reply = self._run(self._acquire_set,
                          [held_key(holder), waiting_key(holder), DEVICES_KEY], *args)
        if int(reply[0]) == -1:
            raise unavailable_device(reply)
        if int(reply[0]) == 1:
            return SetGrant(tuple(text(d) for d in reply[2]), holder, int(reply[1]) / 1000)
        first, now = float(text(reply[1])), int(reply[2])
        return SetWait(waiting_since=first / 1000,
                       waited=max(0.0, (now - first) / 1000),
                       holders=sorted({text(x) for x in reply[3]}),
                       candidates=tuple(dict.fromkeys(names)))

    def free(self, devices: dict[str, int]) -> set[str]:
        """Which of ``devices`` (name -> max_sessions) a newcomer would get now:
        a session free and nobody waiting."""
        args: list[object] = [len(devices)]
        for device, max_sessions in devices.items():
            _check("device", device)
            args += [device, max_sessions]
        return {text(d) for d in self._run(self._free, [DEVICES_KEY], *args)}

    def park(self, holder: str, own: Sequence[Sequence[tuple[str, int]]],
             other: Sequence[Sequence[Sequence[tuple[str, int]]]], *, since: float,
             wake_in: float, queue_key: str, message: str, single: bool = False,
             start_key: str = "") -> bool:
        """Keep ``message`` (``holder``'s retry, as its queue's list holds it)
        in Redis until a session is open to ``holder`` on every slot of
        ``own`` (its queue's candidates, with max_sessions), or every slot of
        one of the ``other`` queues is free, or ``wake_in`` seconds pass; then
        push it to the front of ``queue_key``. A set waiter (not ``single``)
        is woken too when whether it should reserve its devices changes (see
        ``ACQUIRE_SET``). ``start_key`` is the run's hash of start records:
        a parked waiter's entry goes, as it runs nowhere. False, parking
        nothing, when that is so already: ask for the devices again.
        """
        _check("holder", holder)
        maxes: dict[str, int] = {}
        for slots in (own, *other):
            for slot in slots:
                for device, max_sessions in slot:
                    _check("device", device)
                    maxes[device] = max_sessions
        names = [[[d for d, _ in slot] for slot in slots] for slots in (own, *other)]
        reply = self._run(self._park, [DEVICES_KEY, parked_key(holder)], holder,
                          int(since * 1000), _ms("wake_in", wake_in), queue_key, message,
                          json.dumps(names[0]), json.dumps(names[1:]), json.dumps(maxes),
                          0 if single else int((since + RESERVE_AFTER) * 1000), start_key)
        return int(reply) == 1

    def wake_due(self, limit: int = 200) -> int:
        """Wake the parked waiters whose ``wake_in`` has passed; how many."""
        return int(self._run(self._wake_due, [PARKED_KEY], limit))

    def unpark(self, holders: Sequence[str]) -> list[str]:
        """Drop the parked retries of ``holders`` (a cancel); they leave their
        lines. The holders that were parked."""
        if not holders:
            return []
        return [text(h) for h in self._run(self._unpark, [PARKED_KEY], *holders)]

    def queue_release_all(self, pipe: Any, holder: str) -> None:
        """Queue :meth:`release_all` as a bare ``EVALSHA`` on another client's
        ``pipe`` (same Redis); a ``NoScriptError`` reply means: call ``release_all``."""
        keys = [held_key(holder), waiting_key(holder), DEVICES_KEY]
        pipe.evalsha(self._release_all.sha, len(keys), *keys, *self._argv(holder))

    def renew(self, device: str, holder: str, *, ttl: float | None = None) -> bool:
        """Extend the lease by ``ttl``; False if it was lost (expired or released)."""
        ttl_ms = _ms("ttl", self.ttl if ttl is None else ttl)
        keys = [*lease_keys(device), held_key(holder)]
        return int(self._run(self._renew, keys, device, holder, ttl_ms)) > 0

    def release(self, device: str, holder: str) -> bool:
        """Give ``device`` back (and leave its line); False if not held any more."""
        return int(self._run(self._release, self._release_keys(device, holder),
                             device, holder)) == 1

    def queue_release(self, pipe: Any, device: str, holder: str) -> None:
        """Queue :meth:`release` as a bare ``EVALSHA`` on another client's
        ``pipe`` (same Redis); a ``NoScriptError`` reply means: call ``release``."""
        keys = self._release_keys(device, holder)
        pipe.evalsha(self._release.sha, len(keys), *keys, *self._argv(device, holder))

    @staticmethod
    def _release_keys(device: str, holder: str) -> list[str]:
        return [*lease_keys(device), held_key(holder), waiting_key(holder), DEVICES_KEY]

    def release_all(self, holder: str) -> list[str]:
        """Release everything ``holder`` holds and leave every line; the devices released."""
        _check("holder", holder)
        reply = self._run(self._release_all, [held_key(holder), waiting_key(holder),
                                              DEVICES_KEY], holder)
        return sorted(text(d) for d in reply)

    def abandon_wait(self, device: str, holder: str) -> bool:
        """Leave the line for ``device``; False if ``holder`` was not in it."""
        keys = [*lease_keys(device), waiting_key(holder), DEVICES_KEY]
        return int(self._run(self._abandon, keys, device, holder)) == 1

    def set_health(self, device: str, state: str, record: str) -> list[str]:
        """Record ``device``'s health ``state`` and ``record`` (JSON) for
        labq.devices.health, and wake the parked waiters it decides; their ids."""
        _check("device", device)
        keys = [HEALTH_KEY, HEALTH_RECORDS_KEY, health_log_key(device), PARKED_KEY,
                watch_key(device), lease_keys(device)[2]]
        return [text(w) for w in self._run(self._set_health, keys, device, state, record,
                                           HEALTH_LOG_MAXLEN)]

    def holders(self, device: str) -> list[Holder]:
        found = self._states(device)
        return found[0].holders if found else []

    def waiters(self, device: str) -> list[Waiter]:
        found = self._states(device)
        return found[0].waiters if found else []

    def snapshot(self) -> list[DeviceLeases]:
        """Every device with a holder or a waiter, by name: for ``labq devices``."""
        return sorted(self._states(""), key=lambda d: d.device)

    def _states(self, device: str) -> list[DeviceLeases]:
        keys = [DEVICES_KEY, *lease_keys(device)] if device else [DEVICES_KEY]
        out = []
        for name, flat_h, infos, flat_w in self._run(self._state, keys, device):
            holders = []
            for i in range(0, len(flat_h), 2):
                info = json.loads(text(infos[i // 2])) if infos[i // 2] else {}
                holders.append(Holder(text(flat_h[i]), str(info.get("task", "")),
                                      str(info.get("worker", "")), float(info.get("since", 0)),
                                      float(text(flat_h[i + 1])) / 1000,
                                      tuple(str(d) for d in info.get("devices") or ()),
                                      str(info.get("owner", "")), str(info.get("note", "")),
                                      str(info.get("failed_task", ""))))
            waiters = [Waiter(text(flat_w[i]), i // 2 + 1, float(text(flat_w[i + 1])) / 1000)
                       for i in range(0, len(flat_w), 2)]
            out.append(DeviceLeases(text(name), holders, waiters))
        return out


def unavailable_device(reply: Any) -> DeviceUnavailable:
    """The error a lease script's ``{-1, device, record}`` reply means."""
    device = text(reply[1])
    raw = json.loads(text(reply[2])) if len(reply) > 2 and reply[2] else {}
    return DeviceUnavailable.naming(device, str(raw.get("state", "unavailable")),
                                    str(raw.get("reason", "")), float(raw.get("since") or 0),
                                    str(raw.get("by", "")))
