"""The Lua scripts behind :mod:`labq.fairshare.backlogs`.

Each runs atomically in Redis with Redis's clock, so a message is always in
exactly one place: its run's backlog or its queue's list. A client or worker
killed mid-call either ran the whole script or none of it.

ARGV[1] is the key prefix (``labq:fair:``), ARGV[2] the aging time (ms),
ARGV[3] the join credit (dispatches) and ARGV[4] the most messages one call
moves; each script's own arguments follow. Keys are derived inside the
scripts (:mod:`labq.keys` documents them), so fair share needs a single,
non-cluster Redis, as leases do.
"""

LUA_LIB = """
local P, AGE, CREDIT, MAXMOVE = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function qk(q, part) return P..'q:'..q..':'..part end
local function backlog(q, run) return qk(q, 'backlog:'..run) end
-- Free slots of the live workers that consume q (heartbeats register them).
local function free_slots(q)
  local free = 0
  for _, w in ipairs(redis.call('SMEMBERS', qk(q, 'workers'))) do
    local exp = redis.call('ZSCORE', P..'alive', w)
    if exp and tonumber(exp) > now then
      local size = tonumber(redis.call('HGET', P..'slots', w) or '0')
      local busy = math.max(0, tonumber(redis.call('HGET', P..'busy', w) or '0'))
      if busy < size then free = free + size - busy end
    else
      redis.call('SREM', qk(q, 'workers'), w)
      if exp then
        redis.call('ZREM', P..'alive', w); redis.call('HDEL', P..'slots', w)
        redis.call('HDEL', P..'busy', w)
      end
    end
  end
  return free
end
local function leave(q, run, c, pass)
  redis.call('ZREM', qk(q, 'runs:'..c), run)
  redis.call('ZREM', qk(q, 'age'), run)
  redis.call('HDEL', qk(q, 'rank'), run)
  redis.call('ZADD', qk(q, 'gone:'..c), pass, run)
  if redis.call('HLEN', qk(q, 'rank')) == 0 then redis.call('SREM', P..'queues', q) end
end
-- A run starts waiting on q in class c: CREDIT dispatches behind the lowest
-- pass of its class, or where it left off if that is further on.
local function join(q, run, c)
  if redis.call('HEXISTS', qk(q, 'rank'), run) == 1 then return end
  local first = redis.call('ZRANGE', qk(q, 'runs:'..c), 0, 0, 'WITHSCORES')
  local v
  if #first > 0 then v = tonumber(first[2])
  else v = tonumber(redis.call('HGET', qk(q, 'clock'), c) or '0') end
  local floor = v - CREDIT
  local gone = qk(q, 'gone:'..c)
  local old = redis.call('ZSCORE', gone, run)
  local pass = floor
  if old and tonumber(old) > floor then pass = tonumber(old) end
  redis.call('ZREM', gone, run)
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', '('..floor)
  redis.call('ZADD', qk(q, 'runs:'..c), pass, run)
  redis.call('ZADD', qk(q, 'age'), now, run)
  redis.call('HSET', qk(q, 'rank'), run, c)
  redis.call('SADD', P..'queues', q)
end
-- The run whose task goes next: the longest unserved if it waited AGE ms,
-- else the lowest pass of the highest class with work.
local function pick(q)
  local old = redis.call('ZRANGE', qk(q, 'age'), 0, 0, 'WITHSCORES')
  if #old == 0 then return nil end
  if now - tonumber(old[2]) >= AGE then
    return old[1], tonumber(redis.call('HGET', qk(q, 'rank'), old[1]) or '1')
  end
  for c = 0, 2 do
    local r = redis.call('ZRANGE', qk(q, 'runs:'..c), 0, 0)
    if #r > 0 then return r[1], c end
  end
  return nil
end
local function dispatch(q, run, c)  -- true when a message moved
  local bl = backlog(q, run)
  local msg = redis.call('RPOP', bl)
  if msg then redis.call('LPUSH', q, msg) end
  local pass = tonumber(redis.call('ZINCRBY', qk(q, 'runs:'..c), 1, run))
  redis.call('HSET', qk(q, 'clock'), c, pass)
  if redis.call('LLEN', bl) == 0 then leave(q, run, c, pass)
  else redis.call('ZADD', qk(q, 'age'), now, run) end
  return msg ~= false
end
-- Move messages onto q while its workers have slots no message waits for.
local function refill(q)
  if redis.call('HLEN', qk(q, 'rank')) == 0 then return 0 end
  local free = free_slots(q) - redis.call('LLEN', q)
  local moved, tries = 0, 0
  while free > 0 and moved < MAXMOVE and tries < 2 * MAXMOVE do
    tries = tries + 1
    local run, c = pick(q)
    if not run then break end
    if dispatch(q, run, c) then moved = moved + 1; free = free - 1 end
  end
  return moved
end
"""

#: ARGV[5] queue list, ARGV[6] run, ARGV[7] class (0 high, 1 normal, 2 low),
#: ARGV[8...] the messages, oldest first. Reply: how many moved onto the queue.
SUBMIT = LUA_LIB + """
local q, run, c = ARGV[5], ARGV[6], tonumber(ARGV[7])
local bl = backlog(q, run)
local i = 8
while i <= #ARGV do
  local j = math.min(i + 199, #ARGV)
  redis.call('LPUSH', bl, unpack(ARGV, i, j))
  i = j + 1
end
if redis.call('LLEN', bl) > 0 then join(q, run, c) end
return refill(q)
"""

#: A task ended on worker ARGV[5], from queue ARGV[6]: its slot is free.
ENDED = LUA_LIB + """
local w, q = ARGV[5], ARGV[6]
if tonumber(redis.call('HINCRBY', P..'busy', w, -1)) < 0 then redis.call('HSET', P..'busy', w, 0) end
return refill(q)
"""

#: ARGV[5...] queue lists: refill each (a worker's sweep, a client after a restart).
REFILL = LUA_LIB + """
local moved = 0
for i = 5, #ARGV do moved = moved + refill(ARGV[i]) end
return moved
"""

#: ARGV[5] run, ARGV[6...] queue lists: drop the run's backlogs (a cancel).
#: Reply: how many messages were dropped.
DROP = LUA_LIB + """
local run, dropped = ARGV[5], 0
for i = 6, #ARGV do
  local q = ARGV[i]
  local bl = backlog(q, run)
  dropped = dropped + redis.call('LLEN', bl)
  redis.call('DEL', bl)
  local c = redis.call('HGET', qk(q, 'rank'), run)
  if c then
    leave(q, run, c, tonumber(redis.call('ZSCORE', qk(q, 'runs:'..c), run) or '0'))
  end
end
return dropped
"""
