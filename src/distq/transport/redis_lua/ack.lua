-- A master's script. KEYS = ready, masters, results, state; ARGV[1] = the result
-- list's name (KEYS[3]), ARGV[2] = the master's time to live, ms.
-- ARGV[3] = results received so far: acknowledges them. The results list holds the
-- newest first, so the received ones are at its tail: drops those not dropped yet
-- (``taken`` in state counts the dropped) and returns how many are dropped in all. The
-- caller then reads the tail (LRANGE, outside Lua), which holds the results after those:
-- a reply lost on the way is read again by the next take, which acknowledges by the same
-- count. Without ``taken`` (the first take, or the state or the list lapsed or was
-- restored without it) the caller's count is adopted and nothing dropped: a result may
-- then come twice (the master keeps the first), but none is dropped unread. ARGV[3] = -1
-- (a take on a new connection: Redis may have restarted from an older snapshot since the
-- count was made, and the list's tail then holds results pushed since, never read) drops
-- nothing either, and returns the server's count for the caller to read on from.
-- Without ``taken`` the state may be gone too (Redis restarted empty): made again here,
-- it gets the renewal's time to live, so a master killed before renewing leaves no key.

local taken = tonumber(redis.call('HGET', KEYS[4], 'taken') or '-1')
local received = tonumber(ARGV[3])
if taken < 0 then
  received = math.max(received, 0)
  redis.call('HSET', KEYS[4], 'taken', received)
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[2]) + {REPLY_GRACE_MS})
  taken = received
elseif received > taken then
  redis.call('LTRIM', KEYS[3], '0', taken - received - 1)
  redis.call('HSET', KEYS[4], 'taken', received)
  taken = received
end
return taken
