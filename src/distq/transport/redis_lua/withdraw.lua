-- KEYS = ready, redelivered; ARGV = bodies. One 1/0 per body: removed from ready or not.
-- A few bodies: one LREM each; many: one pass that rebuilds the list, in order.

local out = {}
redis.call('SCARD', KEYS[2])  -- another type fails here, before a body is taken out
if #ARGV <= 8 then
  for i = 1, #ARGV do
    out[i] = redis.call('LREM', KEYS[1], 1, ARGV[i])
    if out[i] > 0 then redis.call('SREM', KEYS[2], ARGV[i]) end
  end
  return out
end
local found, keep = sift(KEYS[1], ARGV, 1)
if next(found) then
  redis.call('DEL', KEYS[1])
  push('RPUSH', KEYS[1], keep)
  local gone = {}
  for body, _ in pairs(found) do gone[#gone + 1] = body end
  push('SREM', KEYS[2], gone)
end
for i = 1, #ARGV do
  local n = found[ARGV[i]] or 0
  out[i] = n > 0 and 1 or 0
  if n > 0 then found[ARGV[i]] = n - 1 end
end
return out
