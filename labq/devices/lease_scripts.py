"""The Lua scripts behind :mod:`labq.devices.lease`, one per change of a device's leases.

Each runs atomically in Redis, with Redis's clock (``TIME``). Each ends with
``tidy`` on every device it touched, which also wakes the parked waiter that
the device's change serves (``wake_next``; parking itself is ``PARK``). The keys they
touch are described in :mod:`labq.devices.lease`. They derive the keys of other
devices and holders from names, so they need a single (non-cluster) Redis.
"""

# Shared by every script. ARGV[1] is always the prefix, ARGV[2] the waiter TTL.
LUA_LIB = """
local P, WTTL = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keys(d)
  return P..'lease:'..d, P..'lease:'..d..':info', P..'wait:'..d, P..'wait:'..d..':seen'
end
-- A person's reservation (holder 'resv:<id>') takes every session of its
-- device; a person in a line holds up every task behind it (pwait).
local BIG = 1000000000
local function is_resv(h) return string.sub(h, 1, 5) == 'resv:' end
local function pwait(d) return P..'wait:'..d..':resv' end
local function used(d)  -- sessions in use; BIG while a person holds d
  local hs = redis.call('ZRANGE', P..'lease:'..d, 0, -1)
  for _, x in ipairs(hs) do if is_resv(x) then return BIG end end
  return #hs
end
-- A reservation's index: id -> expiry, and id -> its devices (its lease
-- keys vanish at the expiry, and the sweep must still wake their waiters).
local function index_resv(h, until_, devices)
  local id = string.sub(h, 6)
  redis.call('ZADD', P..'reservations', until_, id)
  redis.call('HSET', P..'reservations:devices', id, cjson.encode(devices))
end
local function unindex_resv(h)
  local id = string.sub(h, 6)
  redis.call('ZREM', P..'reservations', id); redis.call('HDEL', P..'reservations:devices', id)
end
local function join_line(d, h, since)
  local _, _, wait = keys(d)
  redis.call('ZADD', wait, since, h)
  if is_resv(h) then redis.call('ZADD', pwait(d), since, h) end
end
local function keep(key, ms)  -- make key live at least ms more
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ms) then redis.call('PEXPIRE', key, ms) end
end
-- devices whose sessions or lines shrank in this script: tidy wakes a waiter
local changed = {}
local function drop_holder(d, h)  -- 1 if h held d and its lease had not expired
  local lease, info = keys(d)
  local s = redis.call('ZSCORE', lease, h)
  if redis.call('ZREM', lease, h) == 1 then changed[d] = true end
  redis.call('HDEL', info, h)
  redis.call('SREM', P..'held:'..h, d)
  if s and tonumber(s) > now then return 1 end
  return 0
end
local function unwait(d, h)
  local _, _, wait, seen = keys(d)
  local n = redis.call('ZREM', wait, h); redis.call('HDEL', seen, h)
  redis.call('ZREM', pwait(d), h)
  redis.call('SREM', P..'waiting:'..h, d)
  if n == 1 then changed[d] = true end
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
-- A session of d is open to waiter h, first waiting at since (ms): fewer
-- waiters ahead of it than free sessions. Young set waiters are in no line.
local function ahead_of(d, h, since)  -- waiters before h: its rank if in line, as ACQUIRE
  local _, _, wait = keys(d)
  local rank = redis.call('ZRANK', wait, h) or redis.call('ZCOUNT', wait, '-inf', '(' .. since)
  local person = redis.call('ZRANGE', pwait(d), 0, 0)
  if #person > 0 and person[1] ~= h then
    local r = redis.call('ZRANK', wait, person[1])
    if r and r < rank then return BIG end
  end
  return rank
end
-- A device whose health state blocks (labq.devices.health) takes no new
-- task; a person's reservation may still take it.
local BLOCKING = {bad = true, maintenance = true, retired = true}
local function blocked(d, h)
  if h and is_resv(h) then return false end
  local s = redis.call('HGET', P..'health', d)
  return s ~= false and BLOCKING[s] == true
end
local function unavailable(d)  -- the reply that fails a task: DeviceUnavailable
  return {-1, d, redis.call('HGET', P..'health:records', d) or ''}
end
local function open_to(d, h, since, max)
  return not blocked(d, h) and ahead_of(d, h, since) < max - used(d)
end
local function free_now(d, max)  -- a newcomer would get a session of d now
  local _, _, wait = keys(d)
  return not blocked(d) and used(d) < max and redis.call('ZCARD', wait) == 0
end
-- The first slot whose candidates all block h, or nil.
local function all_blocked(slots, h)
  for _, slot in ipairs(slots) do
    local open = false
    for _, d in ipairs(slot) do
      if not blocked(d, h) then open = true; break end
    end
    if not open then return slot end
  end
  return nil
end
-- One distinct device per slot (lists of names) among those ok(d) allows,
-- by augmenting paths: owner[d] = its slot, or nil if some slot stays empty.
local function match(slots, ok)
  local owner = {}
  local function place(s, tried)
    for _, d in ipairs(slots[s]) do
      if not tried[d] and ok(d) then
        tried[d] = true
        if not owner[d] or place(owner[d], tried) then owner[d] = s; return true end
      end
    end
    return false
  end
  for s = 1, #slots do if not place(s, {}) then return nil end end
  return owner
end
local function match_any(slots, ok)  -- every slot has some device ok(d) allows
  for _, slot in ipairs(slots) do
    local any = false
    for _, d in ipairs(slot) do if ok(d) then any = true; break end end
    if not any then return false end
  end
  return true
end
-- Parked waiters (see PARK): the retry message, and what would serve it.
local function parked(h) return P..'parked:'..h end
local function lined(h, d) return redis.call('ZSCORE', P..'wait:'..d, h) ~= false end
-- Whether a parked waiter must run again: 1 if its own queue's slots can all
-- be filled, or another queue's are free; 2 if, for an old set waiter,
-- whether it should reserve (near) differs from whether it does (in its lines).
local function ready(h)
  local v = redis.call('HMGET', parked(h), 'since', 'own', 'max', 'other', 'old_at')
  if not v[2] then return false end
  local since, own, maxes = tonumber(v[1]), cjson.decode(v[2]), cjson.decode(v[3])
  if match(own, function(d) return open_to(d, h, since, maxes[d]) end) then return 1 end
  if all_blocked(own, h) then return 1 end  -- woken to fail at once
  for _, q in ipairs(cjson.decode(v[4])) do
    if match(q, function(d) return free_now(d, maxes[d]) end) then return 1 end
  end
  if v[5] and now >= tonumber(v[5]) then
    local near = match_any(own, function(d) return ahead_of(d, h, since) < maxes[d] end)
    if near ~= lined(h, own[1][1]) then return 2 end
  end
  return false
end
local function wake(h)  -- its message to the front of its queue, once
  local k = parked(h)
  local v = redis.call('HMGET', k, 'msg', 'key', 'max')
  if v[1] then redis.call('RPUSH', v[2], v[1]) end
  if v[3] then
    for d in pairs(cjson.decode(v[3])) do redis.call('ZREM', P..'watch:'..d, h) end
  end
  redis.call('DEL', k); redis.call('ZREM', P..'parked', h)
end
local tidy
-- Join (on) or leave every line of h's own candidates, as ACQUIRE_SET does
-- for a waiter that comes back: a parked set waiter starts or stops
-- reserving without running again. A budget keeps cascades short.
local flips = 16
local function reserve(h, on)
  flips = flips - 1
  local v = redis.call('HMGET', parked(h), 'since', 'own')
  local since, touched = tonumber(v[1]), {}
  for _, slot in ipairs(cjson.decode(v[2])) do
    for _, d in ipairs(slot) do
      local _, _, wait, seen = keys(d)
      if on then
        if not redis.call('ZSCORE', wait, h) then redis.call('ZADD', wait, since, h) end
        redis.call('HSET', seen, h, now)
        redis.call('SADD', P..'waiting:'..h, d)
      else
        unwait(d, h)
      end
      touched[#touched + 1] = d
    end
  end
  if on then keep(P..'waiting:'..h, WTTL) end
  for _, d in ipairs(touched) do tidy(d) end
end
-- After a change of d: wake the earliest parked waiter it serves, and start
-- or stop the reservations it changes; first the front of d's line (8),
-- then the waiters outside it, cheap checks of d first and at most 8 full ones.
local function wake_next(d)
  local _, _, wait = keys(d)
  for _, w in ipairs(redis.call('ZRANGE', wait, 0, 7)) do
    local r = redis.call('EXISTS', parked(w)) == 1 and ready(w)
    if r == 1 then wake(w); return end
    if r == 2 and flips > 0 then reserve(w, false) end
  end
  local watch = P..'watch:'..d
  local ws, full = redis.call('ZRANGE', watch, 0, -1, 'WITHSCORES'), 0
  for i = 1, #ws, 2 do
    local w, since = ws[i], tonumber(ws[i + 1])
    local m = redis.call('HMGET', parked(w), '@'..d, '~'..d, 'old_at')
    if not m[1] and not m[2] then
      redis.call('ZREM', watch, w)
    elseif not lined(w, d) then
      local opens = (m[1] and open_to(d, w, since, tonumber(m[1])))
                    or (m[2] and free_now(d, tonumber(m[2])))
      local near = m[1] and m[3] and now >= tonumber(m[3])
                   and ahead_of(d, w, since) < tonumber(m[1])
      if opens or near then
        full = full + 1
        local r = ready(w)
        if r == 1 then wake(w); return end
        if r == 2 and flips > 0 then reserve(w, true) end
        if full >= 8 then return end
      end
    end
  end
end
function tidy(d)  -- expiries follow the content; empty keys go
  if changed[d] then changed[d] = nil; wake_next(d) end
  local lease, info, wait, seen = keys(d)
  local busy = false
  local top = redis.call('ZRANGE', lease, -1, -1, 'WITHSCORES')
  if #top > 0 then
    local ms = math.max(1, tonumber(top[2]) - now)
    redis.call('PEXPIRE', lease, ms); redis.call('PEXPIRE', info, ms); busy = true
  else
    redis.call('DEL', lease, info)
  end
  if redis.call('ZCARD', wait) > 0 then
    keep(wait, WTTL); keep(seen, WTTL); busy = true
    if redis.call('ZCARD', pwait(d)) > 0 then keep(pwait(d), WTTL) end
  else
    redis.call('DEL', wait, seen, pwait(d))
  end
  if busy then redis.call('SADD', P..'devices', d) else redis.call('SREM', P..'devices', d) end
end
"""

# ARGV: prefix, wttl, device, holder, max_sessions, ttl, task, worker, since,
# checking ('1': a health check, which may lease a device whose health blocks)
ACQUIRE = LUA_LIB + """
local d, h, max, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, info, wait, seen = keys(d)
purge(d)
local function grant(fresh)
  redis.call('ZADD', lease, now + ttl, h)
  if fresh then
    local meta = {task = ARGV[7], worker = ARGV[8], since = now / 1000}
    -- a person's reservation: its record comes as JSON in place of the task name
    if is_resv(h) then meta = cjson.decode(ARGV[7]); meta.since = now / 1000 end
    redis.call('HSET', info, h, cjson.encode(meta))
    if is_resv(h) then index_resv(h, now + ttl, {d}) end
  end
  unwait(d, h)
  redis.call('SADD', P..'held:'..h, d); keep(P..'held:'..h, ttl)
  tidy(d)
  return {1, now + ttl}
end
if redis.call('ZSCORE', lease, h) then return grant(false) end
if ARGV[10] ~= '1' and blocked(d, h) then
  unwait(d, h); tidy(d)
  return unavailable(d)
end
if not redis.call('ZSCORE', wait, h) then
  -- a waiter dropped as stale comes back with its first-wait time
  local since = tonumber(ARGV[9])
  if since <= 0 or since > now then since = now end
  join_line(d, h, since)
end
redis.call('HSET', seen, h, now)
-- free slots go to the earliest live waiters; a newcomer is simply the last
local rank = redis.call('ZRANK', wait, h)
if ahead_of(d, h, 0) < max - used(d) then return grant(true) end
redis.call('SADD', P..'waiting:'..h, d); keep(P..'waiting:'..h, WTTL)
tidy(d)
return {0, rank + 1, redis.call('ZSCORE', wait, h), now, redis.call('ZRANGE', lease, 0, -1)}
"""

# ARGV: prefix, wttl, holder, ttl, task, worker, since, reserve_ms, nslots, then
# for each slot: n, and n pairs of (device, max_sessions). One distinct device
# per slot, all granted together or none. A set waiter holds nobody up while
# it is younger than reserve_ms, or while an older waiter is ahead of it on
# every candidate of a slot (it could not be served anyway): it takes a
# device only where no waiter that does hold others up is ahead of it. Once
# old and near (each slot has a candidate it is first in line for), it joins
# every candidate's line with its first-wait time, and no later task takes
# those devices from it. Single waiters are always in line. One first-wait
# time orders all of a waiter's lines, so no two waiters can each be ahead
# where the other needs to be, and the oldest waiter always reserves.
ACQUIRE_SET = LUA_LIB + """
local h, ttl, since = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[7])
local reserve, nslots = tonumber(ARGV[8]), tonumber(ARGV[9])
local slots, maxof, order, i = {}, {}, {}, 10
for s = 1, nslots do
  local n, c = tonumber(ARGV[i]), {}
  i = i + 1
  for _ = 1, n do
    local d = ARGV[i]
    c[#c + 1] = d
    if not maxof[d] then maxof[d] = tonumber(ARGV[i + 1]); order[#order + 1] = d end
    i = i + 2
  end
  slots[s] = c
end
if since <= 0 or since > now then since = now end
local shut = all_blocked(slots, h)
if shut then
  for _, d in ipairs(order) do unwait(d, h); tidy(d) end
  return unavailable(shut[1])
end
local old = now - since >= reserve
-- free[d]: a session of d is open to h (none of the waiters ahead of h holds
-- it up); close[d]: it will be once d's holders leave
local free, close = {}, {}
for _, d in ipairs(order) do
  purge(d)
  local ahead = ahead_of(d, h, since)
  local shut_d = blocked(d, h)
  free[d] = not shut_d and ahead < maxof[d] - used(d)
  close[d] = not shut_d and ahead < maxof[d]
end
local owner = match(slots, function(d) return free[d] end)
if owner then
  local chosen = {}
  for d, s in pairs(owner) do chosen[s] = d end
  local record = {task = ARGV[5], worker = ARGV[6]}
  if is_resv(h) then
    record = cjson.decode(ARGV[5])
    local ds = {}
    for s = 1, nslots do ds[s] = chosen[s] end
    index_resv(h, now + ttl, ds)
  end
  record.since, record.devices = now / 1000, chosen
  local meta = cjson.encode(record)
  for _, d in ipairs(order) do unwait(d, h) end
  for s = 1, nslots do
    local d = chosen[s]
    local lease, info = keys(d)
    redis.call('ZADD', lease, now + ttl, h)
    redis.call('HSET', info, h, meta)
    redis.call('SADD', P..'held:'..h, d)
  end
  keep(P..'held:'..h, ttl)
  for _, d in ipairs(order) do tidy(d) end
  return {1, now + ttl, chosen}
end
local near = match_any(slots, function(d) return close[d] end)
local holders = {}
for _, d in ipairs(order) do
  local lease, _, wait, seen = keys(d)
  if old and near then  -- first in line everywhere it needs: it reserves
    if not redis.call('ZSCORE', wait, h) then join_line(d, h, since) end
    redis.call('HSET', seen, h, now)
    redis.call('SADD', P..'waiting:'..h, d)
  else  -- behind an older waiter somewhere: it holds nobody up meanwhile
    unwait(d, h)
  end
  if #holders < 8 then
    for _, x in ipairs(redis.call('ZRANGE', lease, 0, 1)) do holders[#holders + 1] = x end
  end
  tidy(d)
end
if old and near then keep(P..'waiting:'..h, WTTL) end
return {0, since, now, holders}
"""

# ARGV: prefix, wttl, n, then n pairs of (device, max_sessions): the devices a
# newcomer would get now (a slot open and nobody in line). Read-only but for purges.
FREE = LUA_LIB + """
local out, i = {}, 4
for _ = 1, tonumber(ARGV[3]) do
  local d, max = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  purge(d)
  if free_now(d, max) then out[#out + 1] = d end
  tidy(d)
end
return out
"""

# ARGV: prefix, wttl, device, holder, ttl
RENEW = LUA_LIB + """
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
RELEASE = LUA_LIB + """
local d, h = ARGV[3], ARGV[4]
local live = drop_holder(d, h)
unwait(d, h); tidy(d)
return live
"""

# ARGV: prefix, wttl, device, holder
ABANDON = LUA_LIB + """
local n = unwait(ARGV[3], ARGV[4]); tidy(ARGV[3])
return n
"""

# ARGV: prefix, wttl, holder
RELEASE_ALL = LUA_LIB + """
local h, out = ARGV[3], {}
for _, d in ipairs(redis.call('SMEMBERS', P..'held:'..h)) do
  if drop_holder(d, h) == 1 then out[#out + 1] = d end
  tidy(d)
end
for _, d in ipairs(redis.call('SMEMBERS', P..'waiting:'..h)) do unwait(d, h); tidy(d) end
redis.call('DEL', P..'held:'..h, P..'waiting:'..h)
if is_resv(h) then unindex_resv(h) end
return out
"""

# ARGV: prefix, wttl, device ('' for all)
STATE = LUA_LIB + """
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

# ARGV: prefix, wttl, holder, since_ms, wake_in_ms, queue key, message, own
# (JSON: the slots on the waiter's queue, lists of names), other (JSON: the
# other queues' slots), max (JSON: device -> max_sessions), old_at_ms (a set
# waiter's first-wait time plus reserve_ms; 0 for a single), and the run's
# start-record hash ('' if none), whose entry for the waiter it drops. Parks the retry
# message of a waiter that gave its slot back: on every one of its devices
# it watches, by its first-wait time; any script whose change of such a
# device serves it (ready) pushes the message to the front of its queue.
# Returns 0, parking nothing, if it is ready now: ask again instead.
PARK = LUA_LIB + """
local h, since, due, key, msg = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local own, maxes = cjson.decode(ARGV[8]), cjson.decode(ARGV[10])
local names = {}
for d in pairs(maxes) do names[#names + 1] = d end
table.sort(names)
for _, d in ipairs(names) do purge(d) end
local k = parked(h)
redis.call('DEL', k)
redis.call('HSET', k, 'since', since, 'own', ARGV[8], 'other', ARGV[9], 'max', ARGV[10])
if tonumber(ARGV[11]) > 0 then redis.call('HSET', k, 'old_at', ARGV[11]) end
if ready(h) then
  redis.call('DEL', k)
  for _, d in ipairs(names) do tidy(d) end
  return 0
end
local mine = {}
for _, slot in ipairs(own) do for _, d in ipairs(slot) do mine[d] = true end end
redis.call('HSET', k, 'msg', msg, 'key', key)
for _, d in ipairs(names) do
  redis.call('HSET', k, (mine[d] and '@' or '~') .. d, maxes[d])
  redis.call('ZADD', P..'watch:'..d, since, h)
end
redis.call('ZADD', P..'parked', now + due, h)
-- it waits, it does not run: its start record goes (the next try writes one)
if ARGV[12] ~= '' then redis.call('HDEL', ARGV[12], h) end
for _, d in ipairs(names) do tidy(d) end
return 1
"""

# ARGV: prefix, wttl, limit. Wakes the parked waiters whose wake-by time has
# passed (a lease that expired unseen, a watcher too far back); how many.
WAKE_DUE = LUA_LIB + """
local due = redis.call('ZRANGEBYSCORE', P..'parked', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, h in ipairs(due) do wake(h) end
return #due
"""

# ARGV: prefix, wttl, then holders. Drops the parked retries of those holders
# (their run is cancelled): each leaves its lines, and what that frees is
# woken. Returns the holders whose retry was dropped.
UNPARK = LUA_LIB + """
local out = {}
for i = 3, #ARGV do
  local h = ARGV[i]
  local k = parked(h)
  local maxes = redis.call('HGET', k, 'max')
  if maxes then
    for d in pairs(cjson.decode(maxes)) do redis.call('ZREM', P..'watch:'..d, h) end
    redis.call('DEL', k, P..'waitsince:'..h); redis.call('ZREM', P..'parked', h)
    for _, d in ipairs(redis.call('SMEMBERS', P..'waiting:'..h)) do unwait(d, h); tidy(d) end
    redis.call('DEL', P..'waiting:'..h)
    out[#out + 1] = h
  end
end
return out
"""

# ARGV: prefix, wttl, holder (a task), reservation holder ('resv:<id>'),
# duration (ms), record (JSON). A failed task's live leases become a
# person's reservation in one step, so no other task slips in between; it
# leaves its lines. Returns the devices now reserved.
HOLD = LUA_LIB + """
local h, r, dur, record = ARGV[3], ARGV[4], tonumber(ARGV[5]), cjson.decode(ARGV[6])
local out = {}
for _, d in ipairs(redis.call('SMEMBERS', P..'held:'..h)) do
  local lease, info = keys(d)
  local s = redis.call('ZSCORE', lease, h)
  if s and tonumber(s) > now then out[#out + 1] = d end
end
table.sort(out)
record.since, record.devices = now / 1000, out
for _, d in ipairs(out) do
  local lease, info = keys(d)
  redis.call('ZREM', lease, h); redis.call('HDEL', info, h)
  redis.call('ZADD', lease, now + dur, r); redis.call('HSET', info, r, cjson.encode(record))
  redis.call('SADD', P..'held:'..r, d)
end
for _, d in ipairs(redis.call('SMEMBERS', P..'held:'..h)) do drop_holder(d, h); tidy(d) end
for _, d in ipairs(redis.call('SMEMBERS', P..'waiting:'..h)) do unwait(d, h); tidy(d) end
redis.call('DEL', P..'held:'..h, P..'waiting:'..h)
if #out > 0 then
  keep(P..'held:'..r, dur)
  index_resv(r, now + dur, out)
end
return out
"""

# ARGV: prefix, wttl, reservation holder, extra (ms). Moves every live lease
# of the reservation ``extra`` later; returns the new expiry (ms), or 0 when
# it holds nothing (released, or expired).
EXTEND = LUA_LIB + """
local r, extra, until_ = ARGV[3], tonumber(ARGV[4]), 0
for _, d in ipairs(redis.call('SMEMBERS', P..'held:'..r)) do
  local lease = keys(d)
  local s = redis.call('ZSCORE', lease, r)
  if s and tonumber(s) > now then
    until_ = tonumber(s) + extra
    redis.call('ZADD', lease, until_, r)
  end
  tidy(d)
end
if until_ > 0 then
  redis.call('PEXPIRE', P..'held:'..r, until_ - now)
  redis.call('ZADD', P..'reservations', until_, string.sub(r, 6))
end
return until_
"""

# ARGV: prefix, wttl, limit. Releases the reservations whose time is up, so
# their devices' waiters are woken at once; returns their ids.
EXPIRE_RESERVATIONS = LUA_LIB + """
local idx, out = P..'reservations', {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local r = 'resv:'..id
  local ds = redis.call('HGET', P..'reservations:devices', id)
  for _, d in ipairs(ds and cjson.decode(ds) or {}) do
    drop_holder(d, r)
    changed[d] = true  -- its lease key may have expired on its own: wake anyway
    tidy(d)
  end
  for _, d in ipairs(redis.call('SMEMBERS', P..'waiting:'..r)) do unwait(d, r); tidy(d) end
  redis.call('DEL', P..'held:'..r, P..'waiting:'..r)
  unindex_resv(r)
  out[#out + 1] = id
end
return out
"""

# ARGV: prefix, wttl, device, state, record (JSON), history maxlen. Sets a
# device's health (labq.devices.health). Parked waiters that can no longer be
# served (every candidate of a slot now blocks them) are woken to fail at
# once; an unblocked device wakes those it now serves. Returns the woken.
SET_HEALTH = LUA_LIB + """
local d, state = ARGV[3], ARGV[4]
redis.call('HSET', P..'health', d, state)
redis.call('HSET', P..'health:records', d, ARGV[5])
redis.call('XADD', P..'health:'..d..':log', 'MAXLEN', '~', ARGV[6], '*', 'record', ARGV[5])
local woken = {}
for _, w in ipairs(redis.call('ZRANGE', P..'watch:'..d, 0, -1)) do
  if redis.call('EXISTS', parked(w)) == 1 and ready(w) == 1 then
    wake(w); woken[#woken + 1] = w
  end
end
for _, w in ipairs(redis.call('ZRANGE', P..'wait:'..d, 0, -1)) do
  if redis.call('EXISTS', parked(w)) == 1 and ready(w) == 1 then
    wake(w); woken[#woken + 1] = w
  end
end
return woken
"""
