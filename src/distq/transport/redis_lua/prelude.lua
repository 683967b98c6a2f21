-- The prelude: the constants and functions the scripts share, each put before a script
-- that uses it by distq.transport.redis_scripts, which fills each name in braces below
-- with the Python constant of that name. A definition starts a line with ``local`` (a
-- function ends at an ``end`` that starts a line), after the comment lines it goes with.
-- Every consumer script gets KEYS = ready, consumers, delayed, redelivered, inflight, dead,
-- masters, clock and ARGV = consumer id, lease ms, in-flight key prefix, then its own arguments.
-- A constant goes to redis.call as a string ('0', '-1'), and the claim's times as
-- string.format('%d', ms): Redis 7.0 writes each Lua number out with %.17g (issue 16).

local REPLY_GRACE_MS = {REPLY_GRACE_MS}
local CLOCK_KEPT_MS = {CLOCK_KEPT_MS}
local CLOCK_STEP_MS = {CLOCK_STEP_MS}
local SHORTEST_KEPT_MS = {SHORTEST_KEPT_MS}
local COPY_LOOK = {COPY_LOOK}
local CLAIM_BYTES = {CLAIM_BYTES}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- one variadic call per 1000 items: Lua's unpack() has a stack limit
local function push(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
-- A list read once against bodies[first..] (a body given twice is taken twice): how many
-- of each body it holds, up to those given; the list's other items, in order; and how
-- many of each body it did not hold. One pass, for a caller that rebuilds the list from
-- the rest, instead of an LREM per body that scans it.
local function sift(key, bodies, first)
  local want, found, keep = {}, {}, {}
  for i = first, #bodies do want[bodies[i]] = (want[bodies[i]] or 0) + 1 end
  for _, body in ipairs(redis.call('LRANGE', key, '0', '-1')) do
    if (want[body] or 0) > 0 then
      want[body] = want[body] - 1
      found[body] = (found[body] or 0) + 1
    else
      keep[#keep + 1] = body
    end
  end
  return found, keep, want
end
-- A WRONGTYPE error now, before a script takes bodies out of a list, if ``ready`` or
-- ``again`` (the redelivered set) holds another type: a script's error undoes none of its
-- writes, and bodies taken out before a push that failed were lost.
local function writable(ready, again)
  redis.call('LLEN', ready)
  redis.call('SCARD', again)
end
-- A consumer's count of its settles by count that ran (settle.lua), read by its close.
local function settles_of(consumers, id)
  return consumers .. ':' .. id
end
-- A consumer's count of the claims and tidies of its in-flight list (claim.lua, tidy.lua),
-- which a settle by count checks: a settle sent before one of them and run after it, late
-- (a partition), found the list as long as it expected with tasks claimed since in it,
-- and acked those. It starts at Redis's time in ms times 1000 (a count that was deleted,
-- by a close or a sweep, starts again past every value it had). Returns the new count,
-- or false where Redis refuses it (full, Redis 6): the consumer then settles by body, and
-- the count is deleted (DEL frees memory: a full Redis takes it), as a settle by count
-- sent before this claim and run after it found the count it carries and acked the
-- tasks claimed here, unrun.
local function claimed(consumers, id)
  local key = settles_of(consumers, id) .. ':claims'
  local count = redis.pcall('INCR', key)
  if type(count) ~= 'number' then
    redis.call('DEL', key)
    return false
  end
  if count == 1 then
    local now = now_ms()
    count = now * 1000
    redis.call('SET', key, now .. '000')
  end
  return count
end
-- A consumer's in-flight list ``src`` back to ``ready``, in the order claimed, marked
-- redelivered: to the claim end (a consumer's close: what it had not run runs next), or
-- ``behind`` the tasks queued (a lapsed lease: its worker died or froze, maybe for one of
-- them; at the claim end a task that ends its worker each time it runs went to each
-- worker started next, and none of the tasks queued behind it ran). LRANGE lists the
-- newest claim first, so RPUSH ends the oldest at the claim end, and LPUSH of the list
-- reversed puts it first of those behind.
local function requeue_all(src, ready, again, behind)
  local held = redis.call('LRANGE', src, '0', '-1')
  if #held > 0 then
    writable(ready, again)
    redis.call('DEL', src)
    if behind then
      local oldest_first = {}
      for i = #held, 1, -1 do oldest_first[#oldest_first + 1] = held[i] end
      push('LPUSH', ready, oldest_first)
    else
      push('RPUSH', ready, held)
    end
    push('SADD', again, held)
  end
end
-- Over half a lease since the last sweep (``clock``): Redis was stopped (SIGSTOP, a VM
-- paused) or nobody reached it, and leases ran out meanwhile, though a live consumer
-- calls every third of a lease at least (a renewal, a BLMOVE slice). A lease that ran
-- out in that gap gets the time it had left back, once: its deadline then ends in .5 ms,
-- until its own renewal makes it whole. Swept at once, a frozen Redis had another slot
-- run a copy of a task still running (held19); once only, a dead worker's tasks wait one
-- lease more at most, however often a slow host stretches the gap. The half is of the
-- shortest lease a caller had in the last minute (``lease``, since ``lease_at``): by the
-- caller's own, a sweep with a long lease swept a short one at once (stood20). The clock
-- is written a tenth of a second (or an eighth of that lease) apart at most, and not at
-- all where Redis refuses it (full, on Redis 6). Returns whether it was due (written).
local function resume(consumers, clock, lease, now)
  local got = redis.call('HMGET', clock, 'at', 'lease', 'lease_at')
  local at, shortest, since = tonumber(got[1] or ''), tonumber(got[2] or ''), tonumber(got[3] or '')
  local write = at == nil or now < at  -- ahead of Redis's time (another host's snapshot)
  -- forgotten after a minute of calls without that lease, not of time: a freeze keeps it
  local called = at or now
  if shortest == nil or since == nil or lease < shortest or called - since > SHORTEST_KEPT_MS then
    shortest, since, write = lease, now, true
  elseif at ~= nil and now - at >= math.min(CLOCK_STEP_MS, shortest / 8) then
    write = true
    if lease == shortest then
      since = now
    end
  end
  if write then
    redis.pcall('HSET', clock, 'at', now, 'lease', shortest, 'lease_at', since)
    redis.pcall('PEXPIRE', clock, CLOCK_KEPT_MS)
  end
  if at == nil or now - at <= shortest / 2 then
    return write
  end
  local lapsed = redis.call('ZRANGEBYSCORE', consumers, '(' .. at, now, 'WITHSCORES')
  for i = 1, #lapsed, 2 do
    local deadline = tonumber(lapsed[i + 1])
    if deadline % 1 == 0 then
      redis.call('ZADD', consumers, now + deadline - at + 0.5, lapsed[i])
    end
  end
  return write
end
-- two range reads when nothing is due: cheap enough for every claim. Returns the first
-- delayed retry left, {body, deadline} ({} if none), for a claim to say when it is due.
-- ``lease``: the caller's, in ms (a number).
-- ``spaced`` (a claim): the lapsed leases are read only when the clock is written (a tenth
-- of a second, or an eighth of the shortest lease, since the last), so each lapse is
-- swept that much later at most: a claim every 0.3 ms (a lone task's) read them each time,
-- ~6,000 of the ~102,000 instructions of Redis's in its claim (issue 16).
local function sweep(ready, consumers, delayed, again, prefix, now, clock, lease, spaced)
  local due = resume(consumers, clock, lease, now)
  for _, id in ipairs((due or not spaced) and redis.call('ZRANGEBYSCORE', consumers, '-inf', string.format('%d', now), 'LIMIT', '0', '100') or {}) do
    requeue_all(prefix .. id, ready, again, true)
    redis.call('DEL', settles_of(consumers, id), settles_of(consumers, id) .. ':claims')
    redis.call('ZREM', consumers, id)
  end
  local first = redis.call('ZRANGE', delayed, '0', '0', 'WITHSCORES')
  if first[2] and tonumber(first[2]) <= now then
    local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', '0', '1000')
    redis.call('LPUSH', ready, unpack(due))
    redis.call('ZREM', delayed, unpack(due))
    first = redis.call('ZRANGE', delayed, '0', '0', 'WITHSCORES')
  end
  return first
end
