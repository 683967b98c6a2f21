-- KEYS as prelude.lua says.
-- ARGV[1] = lease ms, ARGV[2] = in-flight prefix, ARGV[3..] = consumer ids: the lease of
-- each renewed, as a claim of nothing renews one, in one round trip for a worker's slots
-- (its keeper's). XX: a consumer closed, or swept after its lease lapsed, stays gone (a
-- claim of its own brings it back, as before), so a slot's count never outlives it.

local now = now_ms()
for i = 3, #ARGV do redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], now, KEYS[8], tonumber(ARGV[1]))
