"""Device leases in Redis: at most ``max_sessions`` holders per device.

Every change runs in one Lua script, so a check and its write can never
interleave with another worker's. Times come from Redis's own clock (``TIME``
inside the scripts): workers' clocks may disagree, Redis's is the only one.

Keys (``{d}`` a device name, ``{h}`` a holder, normally a Celery task id)::

    labq:lease:{d}        ZSET  holder -> expiry (ms since epoch)
    labq:lease:{d}:info   HASH  holder -> JSON {task, worker, since}
    labq:wait:{d}         ZSET  waiter -> first-wait time (ms): FIFO order
    labq:wait:{d}:seen    HASH  waiter -> last poll (ms)
    labq:held:{h}         SET   devices {h} holds, for release_all()
    labq:waiting:{h}      SET   devices {h} waits for, for release_all()
    labq:devices          SET   devices with any lease or waiter

Expired holders and waiters that stopped polling are purged by the next
script that touches their device; every key also carries a PEXPIRE, so a
device nobody touches again leaves nothing behind. The scripts derive the keys
of other devices and holders from names, so they need a single (non-cluster)
Redis.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis

from labq.errors import BrokerUnavailable, DeviceBusy, LeaseError
from labq.settings import mask_url

log = logging.getLogger(__name__)

PREFIX = "labq:"
DEVICES_KEY = PREFIX + "devices"
# "r1:info" would be the lease key of "r1"'s info hash: refuse such names.
RESERVED_SUFFIXES = (":info", ":seen")


def lease_keys(device: str) -> tuple[str, str, str, str]:
    """The (lease, info, wait, seen) keys of ``device``."""
    return (f"{PREFIX}lease:{device}", f"{PREFIX}lease:{device}:info",
            f"{PREFIX}wait:{device}", f"{PREFIX}wait:{device}:seen")


def held_key(holder: str) -> str:  # devices the holder holds
    return f"{PREFIX}held:{holder}"


def waiting_key(holder: str) -> str:  # devices the holder waits for
    return f"{PREFIX}waiting:{holder}"


# Shared by every script. ARGV[1] is always the prefix, ARGV[2] the waiter TTL.
_LUA_LIB = """
local P, WTTL = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keys(d)
  return P..'lease:'..d, P..'lease:'..d..':info', P..'wait:'..d, P..'wait:'..d..':seen'
end
local function keep(key, ms)  -- make key live at least ms more
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ms) then redis.call('PEXPIRE', key, ms) end
end
local function drop_holder(d, h)  -- 1 if h held d and its lease had not expired
  local lease, info = keys(d)
  local s = redis.call('ZSCORE', lease, h)
  redis.call('ZREM', lease, h); redis.call('HDEL', info, h)
  redis.call('SREM', P..'held:'..h, d)
  if s and tonumber(s) > now then return 1 end
  return 0
end
local function unwait(d, h)
  local _, _, wait, seen = keys(d)
  local n = redis.call('ZREM', wait, h); redis.call('HDEL', seen, h)
  redis.call('SREM', P..'waiting:'..h, d)
  return n
end
local function purge(d)
  local lease, _, wait, seen = keys(d)
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', lease, '-inf', now)) do drop_holder(d, h) end
  local flat, seen_at = redis.call('HGETALL', seen), {}
  for i = 1, #flat, 2 do seen_at[flat[i]] = tonumber(flat[i + 1]) end
  for _, w in ipairs(redis.call('ZRANGE', wait, 0, -1)) do
    if not seen_at[w] or seen_at[w] + WTTL <= now then unwait(d, w) end
  end
end
local function tidy(d)  -- expiries follow the content; empty keys go
  local lease, info, wait, seen = keys(d)
  local used = false
  local top = redis.call('ZRANGE', lease, -1, -1, 'WITHSCORES')
  if #top > 0 then
    local ms = math.max(1, tonumber(top[2]) - now)
    redis.call('PEXPIRE', lease, ms); redis.call('PEXPIRE', info, ms); used = true
  else
    redis.call('DEL', lease, info)
  end
  if redis.call('ZCARD', wait) > 0 then
    keep(wait, WTTL); keep(seen, WTTL); used = true
  else
    redis.call('DEL', wait, seen)
  end
  if used then redis.call('SADD', P..'devices', d) else redis.call('SREM', P..'devices', d) end
end
"""

# ARGV: prefix, wttl, device, holder, max_sessions, ttl, task, worker, since
_ACQUIRE = _LUA_LIB + """
local d, h, max, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, info, wait, seen = keys(d)
purge(d)
local function grant(fresh)
  redis.call('ZADD', lease, now + ttl, h)
  if fresh then
    local meta = {task = ARGV[7], worker = ARGV[8], since = now / 1000}
    redis.call('HSET', info, h, cjson.encode(meta))
  end
  unwait(d, h)
  redis.call('SADD', P..'held:'..h, d); keep(P..'held:'..h, ttl)
  tidy(d)
  return {1, now + ttl}
end
if redis.call('ZSCORE', lease, h) then return grant(false) end
if not redis.call('ZSCORE', wait, h) then
  -- a waiter dropped as stale comes back with its first-wait time
  local since = tonumber(ARGV[9])
  if since <= 0 or since > now then since = now end
  redis.call('ZADD', wait, since, h)
end
redis.call('HSET', seen, h, now)
-- free slots go to the earliest live waiters; a newcomer is simply the last
local rank = redis.call('ZRANK', wait, h)
if rank < max - redis.call('ZCARD', lease) then return grant(true) end
redis.call('SADD', P..'waiting:'..h, d); keep(P..'waiting:'..h, WTTL)
tidy(d)
return {0, rank + 1, redis.call('ZSCORE', wait, h), now, redis.call('ZRANGE', lease, 0, -1)}
"""

# ARGV: prefix, wttl, device, holder, ttl
_RENEW = _LUA_LIB + """
local d, h, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local lease, info = keys(d)
local s = redis.call('ZSCORE', lease, h)
-- an expired lease is lost even if nobody purged it yet: the slot may be reused
if not s or tonumber(s) <= now then drop_holder(d, h); tidy(d); return 0 end
redis.call('ZADD', lease, now + ttl, h)
keep(lease, ttl); keep(info, ttl); keep(P..'held:'..h, ttl)
return now + ttl
"""

# ARGV: prefix, wttl, device, holder
_RELEASE = _LUA_LIB + """
local d, h = ARGV[3], ARGV[4]
local live = drop_holder(d, h)
unwait(d, h); tidy(d)
return live
"""

# ARGV: prefix, wttl, device, holder
_ABANDON = _LUA_LIB + """
local n = unwait(ARGV[3], ARGV[4]); tidy(ARGV[3])
return n
"""

# ARGV: prefix, wttl, holder
_RELEASE_ALL = _LUA_LIB + """
local h, out = ARGV[3], {}
for _, d in ipairs(redis.call('SMEMBERS', P..'held:'..h)) do
  if drop_holder(d, h) == 1 then out[#out + 1] = d end
  tidy(d)
end
for _, d in ipairs(redis.call('SMEMBERS', P..'waiting:'..h)) do unwait(d, h); tidy(d) end
redis.call('DEL', P..'held:'..h, P..'waiting:'..h)
return out
"""

# ARGV: prefix, wttl, device ('' for all)
_STATE = _LUA_LIB + """
local ds = {ARGV[3]}
if ARGV[3] == '' then ds = redis.call('SMEMBERS', P..'devices') end
local out = {}
for _, d in ipairs(ds) do
  purge(d); tidy(d)
  local lease, info, wait = keys(d)
  local hs = redis.call('ZRANGE', lease, 0, -1, 'WITHSCORES')
  local ws = redis.call('ZRANGE', wait, 0, -1, 'WITHSCORES')
  local infos = {}
  for i = 1, #hs, 2 do infos[#infos + 1] = redis.call('HGET', info, hs[i]) end
  if #hs > 0 or #ws > 0 then out[#out + 1] = {d, hs, infos, ws} end
end
return out
"""


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
class Holder:
    holder: str
    task: str
    worker: str
    since: float
    expires_at: float


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


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._abandon = client.register_script(_ABANDON)
        self._release_all = client.register_script(_RELEASE_ALL)
        self._state = client.register_script(_STATE)

    def _run(self, script: Any, keys: Sequence[str], *args: object) -> Any:
        try:
            return script(keys=list(keys), args=[PREFIX, int(self.waiter_ttl * 1000), *args])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise BrokerUnavailable(
                f"device leases: Redis at {masked_url(self.client)} unavailable: {exc}") from exc

    def acquire(self, device: str, holder: str, max_sessions: int, *, task: str = "",
                worker: str = "", ttl: float | None = None,
                since: float | None = None) -> Grant | Wait:
        """Take a lease on ``device`` if its turn has come, else join/refresh the line.

        A holder that already holds ``device`` gets its lease renewed. ``since``
        (epoch s) is the first-wait time to use if ``holder`` is not in line.
        """
        _check("device", device)
        _check("holder", holder)
        if not isinstance(max_sessions, int) or max_sessions < 1:
            raise LeaseError(f"max_sessions of {device!r} must be >= 1, got {max_sessions!r}")
        ttl_ms = _ms("ttl", self.ttl if ttl is None else ttl)
        since_ms = int(since * 1000) if since else 0
        reply = self._run(self._acquire,
                          [*lease_keys(device), held_key(holder), waiting_key(holder), DEVICES_KEY],
                          device, holder, max_sessions, ttl_ms, task, worker, since_ms)
        if int(reply[0]) == 1:
            return Grant(device, holder, int(reply[1]) / 1000)
        first, now = float(_s(reply[2])), int(reply[3])
        return Wait(position=int(reply[1]), waiting_since=first / 1000,
                    holders=[_s(h) for h in reply[4]], device=device,
                    waited=max(0.0, (now - first) / 1000))

    def renew(self, device: str, holder: str, *, ttl: float | None = None) -> bool:
        """Extend the lease by ``ttl``; False if it was lost (expired or released)."""
        ttl_ms = _ms("ttl", self.ttl if ttl is None else ttl)
        keys = [*lease_keys(device), held_key(holder)]
        return int(self._run(self._renew, keys, device, holder, ttl_ms)) > 0

    def release(self, device: str, holder: str) -> bool:
        """Give ``device`` back (and leave its line); False if not held any more."""
        keys = [*lease_keys(device), held_key(holder), waiting_key(holder), DEVICES_KEY]
        return int(self._run(self._release, keys, device, holder)) == 1

    def release_all(self, holder: str) -> list[str]:
        """Release everything ``holder`` holds and leave every line; the devices released."""
        _check("holder", holder)
        reply = self._run(self._release_all, [held_key(holder), waiting_key(holder),
                                              DEVICES_KEY], holder)
        return sorted(_s(d) for d in reply)

    def abandon_wait(self, device: str, holder: str) -> bool:
        """Leave the line for ``device``; False if ``holder`` was not in it."""
        keys = [*lease_keys(device), waiting_key(holder), DEVICES_KEY]
        return int(self._run(self._abandon, keys, device, holder)) == 1

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
                info = json.loads(_s(infos[i // 2])) if infos[i // 2] else {}
                holders.append(Holder(_s(flat_h[i]), str(info.get("task", "")),
                                      str(info.get("worker", "")), float(info.get("since", 0)),
                                      float(_s(flat_h[i + 1])) / 1000))
            waiters = [Waiter(_s(flat_w[i]), i // 2 + 1, float(_s(flat_w[i + 1])) / 1000)
                       for i in range(0, len(flat_w), 2)]
            out.append(DeviceLeases(_s(name), holders, waiters))
        return out


class Renewer:
    """Renew ``grant`` every ttl/3 until the block exits.

    Every Renewer of a process is served by one daemon thread
    (:class:`_RenewalThread`), started on first use: a task does not pay
    for starting and joining a thread of its own. The thread dies with its
    process, so a killed holder stops renewing and its lease expires by TTL.
    When a renewal finds the lease gone, ``lost`` is set and a warning
    logged; renewals never raise.
    """

    def __init__(self, leases: Leases, grant: Grant, *, ttl: float | None = None) -> None:
        self.leases = leases
        self.grant = grant
        self.ttl = leases.ttl if ttl is None else ttl
        self.lost = False
        self._active = False

    def __enter__(self) -> Renewer:
        self._active = True
        _RenewalThread.get().add(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._active = False  # a renewal still in flight now goes unreported
        _RenewalThread.get().remove(self)

    def renew(self) -> bool:
        """Renew once; False once the lease is known lost (then stop renewing)."""
        g = self.grant
        try:
            alive = self.leases.renew(g.device, g.holder, ttl=self.ttl)
        except Exception as exc:  # transient: the lease may still be alive, retry
            log.warning("lease on %s for %s: renewal failed: %s", g.device, g.holder, exc)
            return True
        if not alive and self._active:
            self.lost = True
            log.warning("lease on %s for %s was lost (expired or released)", g.device, g.holder)
        return alive


class _RenewalThread:
    """The one thread of a process that renews its leases, each every ttl/3."""

    _instance: tuple[int, _RenewalThread] | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> _RenewalThread:
        with cls._lock:  # a forked child starts its own thread
            if cls._instance is None or cls._instance[0] != os.getpid():
                cls._instance = (os.getpid(), cls())
            return cls._instance[1]

    def __init__(self) -> None:
        self._due: dict[Renewer, float] = {}
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lease-renewer")
        self._thread.start()

    def add(self, renewer: Renewer) -> None:
        with self._wake:
            at = time.monotonic() + renewer.ttl / 3
            # The thread sleeps until the earliest renewal: wake it only when
            # this one comes sooner (every task of a process would otherwise).
            if not self._due or at < min(self._due.values()):
                self._wake.notify()
            self._due[renewer] = at

    def remove(self, renewer: Renewer) -> None:
        with self._wake:
            self._due.pop(renewer, None)

    def _loop(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [r for r, at in self._due.items() if at <= now]
                if not due:
                    self._wake.wait(min(self._due.values(), default=now + 60) - now)
                    continue
                for r in due:
                    self._due[r] = now + r.ttl / 3
            for r in due:  # outside the lock: a slow Redis must not block add/remove
                if not r.renew():
                    self.remove(r)
