-- A master's script. KEYS = ready, masters, results, state; ARGV[1] = the result
-- list's name (KEYS[3]), ARGV[2] = the master's time to live, ms.
-- Register or renew the master; returns how many of its submitted bodies Redis holds:
-- 0 when it was not registered and live (never before, restarted empty, restored past
-- its deadline, or away too long: workers may have dead-lettered its tasks meanwhile).

local now, ttl = now_ms(), tonumber(ARGV[2])
local deadline = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
local held = 0
if deadline and deadline >= now then
  held = tonumber(redis.call('HGET', KEYS[4], 'submitted') or '0')
else
  redis.call('HSET', KEYS[4], 'submitted', '0')
  redis.call('HDEL', KEYS[4], 'taken')  -- its results list may have lapsed: see _ACK
end
for i = 3, 4 do redis.call('PEXPIRE', KEYS[i], ttl + REPLY_GRACE_MS) end
return held
