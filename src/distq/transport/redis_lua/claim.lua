-- A consumer script: KEYS and ARGV[1..3] as prelude.lua says.
-- It renews the consumer's lease and sweeps (lapsed leases: when the clock is due), then claims.
-- ARGV[4] = how many to claim, ARGV[5] = '1' after a BLMOVE (flag the in-flight head).
-- Returns {ms until the next delayed retry is due or -1, head flag, {i, ...}, claims,
-- body, ...}: the third item lists the positions (1-based) of the bodies that are
-- redeliveries, so that the reply carries one item per task (and the redelivered set is
-- only read when it has members); claims: the count a settle by count checks (prelude.lua's
-- ``claimed``), counted by a claim that may lease tasks (false for a renewal: ARGV[4] = 0).

local now = now_ms()
local lease = tonumber(ARGV[2])  -- once: each tonumber() of a string costs ~1,200 instructions
redis.call('ZADD', KEYS[2], string.format('%d', now + lease), ARGV[1])
local first = sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], now, KEYS[8], lease, true)
-- read before any task moves: a redelivered set of another type fails the claim here,
-- not after it moved them into the in-flight list (an error undoes no write)
local again = redis.call('SCARD', KEYS[4])
local want = tonumber(ARGV[4])
local out = {-1, 0, {}, (want > 0 or ARGV[5] == '1') and claimed(KEYS[2], ARGV[1])}
local got, bytes = 0, 0
while got < want and bytes < CLAIM_BYTES do
  -- as many as fit CLAIM_BYTES if all were the size of the next one (tasks of a job are
  -- alike): large tasks are claimed a few at a time, small ones all at once; those past
  -- CLAIM_BYTES (sizes that differ) go back to the claim end, in their order
  local next = redis.call('LINDEX', KEYS[1], '-1')
  if not next then break end
  local fit = math.floor((CLAIM_BYTES - bytes) / math.max(#next, 1))
  local bodies = redis.call('RPOP', KEYS[1], math.max(1, math.min(want - got, 1000, fit)))
  local kept = #bodies
  for i, body in ipairs(bodies) do
    if bytes >= CLAIM_BYTES then
      kept = i - 1
      break
    end
    out[#out + 1] = body
    bytes = bytes + #body
  end
  if kept < #bodies then
    local back = {}
    for i = #bodies, kept + 1, -1 do
      back[#back + 1] = bodies[i]
      bodies[i] = nil
    end
    push('RPUSH', KEYS[1], back)
  end
  push('LPUSH', KEYS[5], bodies)
  got = got + kept
end
if (got < want or want == 0) and first[2] then  -- the sweep's read: a claim adds none
  out[1] = math.max(0, tonumber(first[2]) - now)
end
if again > 0 then
  if ARGV[5] == '1' then
    local head = redis.call('LINDEX', KEYS[5], got)
    if head then out[2] = redis.call('SREM', KEYS[4], head) end
  end
  local positions = out[3]
  for i = 1, got do
    if redis.call('SREM', KEYS[4], out[i + 4]) == 1 then positions[#positions + 1] = i end
  end
end
return out
