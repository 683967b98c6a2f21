-- A consumer script: KEYS and ARGV[1..3] as prelude.lua says.
-- ARGV[4] = how many deliveries the consumer holds, ARGV[5] = how many of the oldest it
-- acks (the common case: a batch settled in order), ARGV[6] = the count of claims its last
-- claim returned; or ARGV[4] = -1: acks by body, below (ARGV[5] and [6] unused).
-- ARGV[7..]: runs (op, arg, n, body 1, ..., body n), n bodies with the same op and arg:
-- 'r' results for KEYS[arg], 't' retries after arg ms, 'd' dead letters, 'a' acks (arg 0),
-- and, acking by body, 'g' (arg k, one delivery): the k runs after it are published only
-- if the in-flight list still holds that delivery (the n-th 'g' of a body: n of it). A
-- delivery whose lease lapsed went back to the queue (its worker stalled: stopped, paused,
-- a task holding the GIL): its retry or dead letter would start the task again after its
-- result, or fail a task that succeeded; the copy decides. Its result goes, and the copy
-- is dropped if it still waits near the submit end of the ready list, where the lapse put
-- it, or near its claim end (a bounded look at each: a copy claimed again runs again; a
-- scan of a long list blocked Redis for seconds).
-- Everything is published before any ack: a failure repeats.
-- A result goes only to a list whose master is registered and live (KEYS[7]), and the
-- list expires a grace period after that master's deadline.
-- Acking by count needs the in-flight list to be exactly what the consumer holds, oldest
-- at the tail: if its length says otherwise (a sweep took it), or a claim or tidy ran
-- since the consumer's last claim (prelude.lua's ``claimed``: a settle that ran late,
-- after the consumer had settled again and claimed more, acked those), nothing is done
-- and 0 is returned, and the consumer acks by body instead; by count it returns 1, and counts it
-- (``settles_of``: its close returns the count, for a settle whose answer never came, a
-- stall past the wait, may have run before the close). Acking by body
-- returns the deliveries a 'g' found not held (the consumer's ``late``). Acking most of
-- the in-flight list by body rebuilds it (3 calls) instead of one LREM per task.

local expect, count = tonumber(ARGV[4]), tonumber(ARGV[5])
if expect >= 0 then
  if redis.call('LLEN', KEYS[5]) ~= expect then return 0 end
  if redis.call('GET', settles_of(KEYS[2], ARGV[1]) .. ':claims') ~= ARGV[6] then return 0 end
end
local now = now_ms()
local live, acks, skip, late, unsent = {}, {}, 0, {}, {}
local gated = nil  -- made at the first 'g': a settle by count (the task path) makes none
local i = 7
while i <= #ARGV do
  local op, arg, first, last = ARGV[i], tonumber(ARGV[i + 1]), i + 3, i + 2 + tonumber(ARGV[i + 2])
  if skip > 0 then
    skip = skip - 1
  elseif op == 'g' then
    -- the n-th gate of a body needs n of it held: two deliveries of one task (its lease
    -- lapsed, the consumer claimed the copy) held once published two retries
    gated = gated or {}
    local n = (gated[ARGV[first]] or 0) + 1
    if redis.call('LPOS', KEYS[5], ARGV[first], 'RANK', n) then
      gated[ARGV[first]] = n
    else
      skip, late[ARGV[first]] = arg, true
      unsent[#unsent + 1] = ARGV[first]
    end
  elseif op == 'r' then
    if live[arg] == nil then
      local deadline = tonumber(redis.call('ZSCORE', KEYS[7], KEYS[arg]))
      live[arg] = deadline ~= nil and deadline >= now and deadline
    end
    if live[arg] then
      for j = first, last, 1000 do
        redis.call('LPUSH', KEYS[arg], unpack(ARGV, j, math.min(j + 999, last)))
      end
    end
  elseif op == 't' then
    for j = first, last do
      if arg > 0 then
        redis.call('ZADD', KEYS[3], now + arg, ARGV[j])
      else
        redis.call('LPUSH', KEYS[1], ARGV[j])
      end
    end
  elseif op == 'd' then
    for j = first, last do redis.call('RPUSH', KEYS[6], ARGV[j]) end
  else
    for j = first, last do acks[#acks + 1] = ARGV[j] end
  end
  i = last + 1
end
for k, deadline in pairs(live) do
  if deadline then redis.call('PEXPIREAT', KEYS[k], string.format('%d', deadline + REPLY_GRACE_MS)) end
end
if expect >= 0 then
  if count >= expect then
    redis.call('DEL', KEYS[5])
  else
    redis.call('LTRIM', KEYS[5], '0', -count - 1)
  end
  redis.pcall('INCR', settles_of(KEYS[2], ARGV[1]))  -- refused (full, Redis 6): as if not run
  return 1
end
-- a body acked and not held (its lease lapsed), and not late with a retry or dead
-- letter: its task is done, the copy that went back is dropped if it still waits there:
-- behind the tasks queued, where a lapse puts it, or at the claim end, where a close does
local function done(body)
  if late[body] then return end
  late[body] = true
  for _, rank in ipairs({'1', '-1'}) do
    if redis.call('LPOS', KEYS[1], body, 'RANK', rank, 'MAXLEN', COPY_LOOK) then
      redis.call('LREM', KEYS[1], rank, body)
      redis.call('SREM', KEYS[4], body)
      return
    end
  end
end
local held = redis.call('LLEN', KEYS[5])
if #acks * 2 < held then
  for _, body in ipairs(acks) do
    if redis.call('LREM', KEYS[5], '-1', body) == 0 then done(body) end
  end
else
  local _, keep, missed = sift(KEYS[5], acks, 1)
  if held > 0 then
    redis.call('DEL', KEYS[5])
    push('RPUSH', KEYS[5], keep)
  end
  for body, left in pairs(missed) do
    if left > 0 then done(body) end
  end
end
return unsent
