-- KEYS = ready, redelivered, delayed; ARGV = '1' to leave a body queued redelivered
-- (a worker had it: its lease lapsed, or it handed it back, and the copy it had may still
-- run) or '0' to take it too, then the bodies. One answer per body: 1 removed from ready
-- or, not found there, from the retries waiting out their delay, 0 neither, -1 left,
-- queued redelivered (a body given twice is removed twice if queued twice), the newest
-- (the head) first.
-- A few bodies: one LREM each, a scan Redis runs itself (about 15 ms for a million tasks
-- without the body). More: one read of the list from the head, a chunk at a time, that
-- stops once every body is found; each found is then marked in place (LSET), and the
-- marks go in one LREM, in this script, so no reader ever sees one. The other tasks
-- stay as they were: the list was rebuilt instead (read whole into Lua, deleted, pushed
-- again), and 9 bodies withdrawn of a million queued held Redis about 2 s.

local FEW, CHUNK = 16, 1000
local leave, bodies = ARGV[1] == '1', {}
for i = 2, #ARGV do bodies[i - 1] = ARGV[i] end
local out = {}
-- a retry waiting out its delay (ZREM: a removal, never refused by a full Redis)
local function delayed(out)
  for i = 1, #bodies do
    if out[i] == 0 then out[i] = redis.call('ZREM', KEYS[3], bodies[i]) end
  end
  return out
end
redis.call('SCARD', KEYS[2])  -- another type fails here, before a body is taken out
redis.call('ZCARD', KEYS[3])
local held = {}  -- the bodies queued redelivered, when left: each copy of them
for i = 1, leave and #bodies or 0 do
  if redis.call('SISMEMBER', KEYS[2], bodies[i]) == 1 then held[bodies[i]], out[i] = true, -1 end
end
if #bodies <= FEW then
  for i = 1, #bodies do
    if not held[bodies[i]] then
      out[i] = redis.call('LREM', KEYS[1], '1', bodies[i])
      if out[i] > 0 then redis.call('SREM', KEYS[2], bodies[i]) end
    end
  end
  return delayed(out)
end
local want, left, found, where = {}, 0, {}, {}
for i = 1, #bodies do
  if not held[bodies[i]] then want[bodies[i]], left = (want[bodies[i]] or 0) + 1, left + 1 end
end
local at = 0
while left > 0 do
  local chunk = redis.call('LRANGE', KEYS[1], at, at + CHUNK - 1)
  for j, body in ipairs(chunk) do
    if (want[body] or 0) > 0 then
      want[body], left = want[body] - 1, left - 1
      found[body] = (found[body] or 0) + 1
      where[#where + 1] = at + j - 1
      if left == 0 then break end
    end
  end
  if #chunk < CHUNK then break end
  at = at + CHUNK
end
if #where > 0 then
  -- SREM first: a script's first write may not be one Redis refuses when full (LSET),
  -- where the script is not flagged allow-oom (Redis 6.2); the writes after it may
  local gone = {}
  for body, _ in pairs(found) do gone[#gone + 1] = body end
  push('SREM', KEYS[2], gone)
  local t = redis.call('TIME')
  local mark = '\0distq withdrawn ' .. t[1] .. '.' .. t[2]  -- never a sealed task's bytes
  for _, i in ipairs(where) do redis.call('LSET', KEYS[1], i, mark) end
  redis.call('LREM', KEYS[1], #where, mark)
end
for i = 1, #bodies do
  local n = found[bodies[i]] or 0
  if not held[bodies[i]] then out[i] = n > 0 and 1 or 0 end
  if n > 0 then found[bodies[i]] = n - 1 end
end
return delayed(out)
