-- A consumer script: KEYS and ARGV[1..3] as prelude.lua says.
-- ARGV[4..] = bodies to hand back, each moved only if the in-flight list holds it. A few:
-- one LREM each; most of the list (a keeper's hand-back of a large prefetch): one pass
-- that rebuilds it (prelude.lua's sift, as settle.lua uses it).

local held = redis.call('LLEN', KEYS[5])
writable(KEYS[1], KEYS[4])
if (#ARGV - 3) * 2 < held then
  for i = 4, #ARGV do
    if redis.call('LREM', KEYS[5], '-1', ARGV[i]) > 0 then
      redis.call('RPUSH', KEYS[1], ARGV[i])
      redis.call('SADD', KEYS[4], ARGV[i])
    end
  end
  return
end
local found, keep = sift(KEYS[5], ARGV, 4)
local back = {}
for i = 4, #ARGV do
  if (found[ARGV[i]] or 0) > 0 then
    found[ARGV[i]] = found[ARGV[i]] - 1
    back[#back + 1] = ARGV[i]
  end
end
if #back > 0 then
  redis.call('DEL', KEYS[5])
  push('RPUSH', KEYS[5], keep)
  push('RPUSH', KEYS[1], back)
  push('SADD', KEYS[4], back)
end
