-- A master's script: a lone task's submit and the take's acknowledgement in one call
-- (RedisProducer.submit_then_results), where a submit of more is a transaction before
-- ack.lua. KEYS and ARGV[1..3] as ack.lua says; ARGV[4] = the task's body. It LPUSHes the
-- body onto the queue, acknowledges as ack.lua does (the same steps, by the same counts),
-- counts the body in state (``submitted``), and returns what ack.lua returns. Both counts
-- are read in one HMGET and written in one HSET (4 commands where 6 were: issue 16).
-- State's time to live is set by the master's renewals (renew.lua, a quarter of its
-- time to live apart at most, before the submit when due); here only where the submit
-- found no state (lapsed, or lost by a restart), which it makes afresh.
-- Not flagged allow-oom: a full Redis refuses the LPUSH, its first write, so the script
-- stops having pushed, counted and acknowledged nothing, as a refused transaction; a
-- queue key of another type fails the LPUSH the same way. The next take acknowledges.
-- ``taken`` is written as the string it was read or received as: Redis 7.0 writes a Lua
-- number out with snprintf, ~1,700 instructions (issue 16).

redis.call('LPUSH', KEYS[1], ARGV[4])
local counts = redis.call('HMGET', KEYS[4], 'submitted', 'taken')
local taken = tonumber(counts[2] or '-1')
local received = tonumber(ARGV[3])
local told = counts[2]  -- taken as a string, as read or as received
if taken < 0 then
  taken = math.max(received, 0)
  told = taken
elseif received > taken then
  redis.call('LTRIM', KEYS[3], '0', taken - received - 1)
  taken, told = received, ARGV[3]
end
redis.call('HSET', KEYS[4], 'submitted', tonumber(counts[1] or '0') + 1, 'taken', told)
if not counts[1] then
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[2]) + {REPLY_GRACE_MS})
end
return taken
