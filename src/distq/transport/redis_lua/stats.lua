-- KEYS as prelude.lua says; ARGV = '', 0, in-flight key prefix: no consumer's.
-- Returns {ready tasks and delayed retries, tasks in flight, dead letters, consumers whose
-- lease is live, tasks a worker had and gave up (queued redelivered, or in a lapsed lease),
-- the milliseconds until the last live lease holding a task lapses unless renewed (0: none
-- holds one)}. The tasks of a lease that lapsed (a worker SIGKILLed) count as ready:
-- they wait to run again, though they stay in its in-flight list until a claim or sweep
-- moves them. By the deadline alone: after Redis stood still the next sweep may give such
-- a lease its time back (``resume``), but a Redis nobody called since all its workers died
-- looks the same, and those would count in flight for ever. Stats moves nothing.

local now = now_ms()
local ready = redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[3])
local inflight, live, again, left = 0, 0, redis.call('SCARD', KEYS[4]), 0
local leases = redis.call('ZRANGE', KEYS[2], '0', '-1', 'WITHSCORES')
for i = 1, #leases, 2 do
  local held = redis.call('LLEN', ARGV[3] .. leases[i])
  if tonumber(leases[i + 1]) > now then
    inflight, live = inflight + held, live + 1
    if held > 0 then
      left = math.max(left, tonumber(leases[i + 1]) - now)
    end
  else
    ready, again = ready + held, again + held
  end
end
return {ready, inflight, redis.call('LLEN', KEYS[6]), live, again, left}
