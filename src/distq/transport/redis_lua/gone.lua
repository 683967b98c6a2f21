-- A consumer script: KEYS and ARGV[1..3] as prelude.lua says.
-- ARGV[4..] = result list names; returns 1 for each whose master is not registered and live.

local now, out = now_ms(), {}
for i = 4, #ARGV do
  local deadline = tonumber(redis.call('ZSCORE', KEYS[7], ARGV[i]))
  out[#out + 1] = (deadline and deadline >= now) and 0 or 1
end
return out
