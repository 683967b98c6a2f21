-- KEYS as prelude.lua says; ARGV = '', 0, in-flight key prefix: no consumer's.
-- Returns {ready tasks and delayed retries, tasks in flight (every consumer's list), dead
-- letters, consumers whose lease is live}.

local inflight = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], '0', '-1')) do
  inflight = inflight + redis.call('LLEN', ARGV[3] .. id)
end
return {redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[3]), inflight,
        redis.call('LLEN', KEYS[6]), redis.call('ZCOUNT', KEYS[2], '(' .. now_ms(), '+inf')}
