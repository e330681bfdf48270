"""The Lua scripts behind :mod:`labq.devices.lease`, one per change of a device's leases.

Each runs atomically in Redis, with Redis's clock (``TIME``). The keys they
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
ACQUIRE = LUA_LIB + """
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

# ARGV: prefix, wttl, holder, ttl, task, worker, since, reserve_ms, nslots, then
# for each slot: n, and n pairs of (device, max_sessions). One distinct device
# per slot, all granted together or none. A set waiter younger than
# reserve_ms holds nobody up: it takes a device only where no waiter that
# does is ahead of it. Once older, it joins every candidate's line with its
# first-wait time, and no later task takes those devices from it. Single
# waiters are always in line. One first-wait time orders all of a waiter's
# lines, so no two waiters can each be ahead where the other needs to be.
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
local old = now - since >= reserve
-- free[d]: a session of d is open to h (none of the waiters ahead of h holds
-- it up); close[d]: it will be once d's holders leave
local free, close = {}, {}
for _, d in ipairs(order) do
  purge(d)
  local lease, _, wait, seen = keys(d)
  if old then
    if not redis.call('ZSCORE', wait, h) then redis.call('ZADD', wait, since, h) end
    redis.call('HSET', seen, h, now)
  end
  local ahead = redis.call('ZCOUNT', wait, '-inf', '(' .. since)
  free[d] = ahead < maxof[d] - redis.call('ZCARD', lease)
  close[d] = ahead < maxof[d]
end
local owner = {}
local function place(s, seen)
  for _, d in ipairs(slots[s]) do
    if free[d] and not seen[d] then
      seen[d] = true
      if not owner[d] or place(owner[d], seen) then owner[d] = s; return true end
    end
  end
  return false
end
local all = true
for s = 1, nslots do
  if not place(s, {}) then all = false; break end
end
if all then
  local chosen = {}
  for d, s in pairs(owner) do chosen[s] = d end
  local meta = cjson.encode({task = ARGV[5], worker = ARGV[6], since = now / 1000,
                             devices = chosen})
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
local near, holders = 1, {}
for s = 1, nslots do
  local any = false
  for _, d in ipairs(slots[s]) do any = any or close[d] end
  if not any then near = 0 end
end
for _, d in ipairs(order) do
  if old then redis.call('SADD', P..'waiting:'..h, d) end
  if #holders < 8 then
    local lease = keys(d)
    for _, x in ipairs(redis.call('ZRANGE', lease, 0, 1)) do holders[#holders + 1] = x end
  end
  tidy(d)
end
if old then keep(P..'waiting:'..h, WTTL) end
return {0, near, since, now, holders}
"""

# ARGV: prefix, wttl, n, then n pairs of (device, max_sessions): the devices a
# newcomer would get now (a slot open and nobody in line). Read-only but for purges.
FREE = LUA_LIB + """
local out, i = {}, 4
for _ = 1, tonumber(ARGV[3]) do
  local d, max = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  purge(d)
  local lease, _, wait = keys(d)
  if redis.call('ZCARD', lease) < max and redis.call('ZCARD', wait) == 0 then out[#out + 1] = d end
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
