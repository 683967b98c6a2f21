-- A consumer script: KEYS and ARGV[1..3] as prelude.lua says.
-- A consumer's close: its in-flight tasks go back to the ready list (to its claim end,
-- marked redelivered) and its lease is removed. Returns how many of its settles by count
-- ran (``settles_of``, see settle.lua; false: none), and forgets that count.

requeue_all(KEYS[5], KEYS[1], KEYS[4], false)
redis.call('ZREM', KEYS[2], ARGV[1])
local settled = redis.call('GET', settles_of(KEYS[2], ARGV[1]))
redis.call('DEL', settles_of(KEYS[2], ARGV[1]), settles_of(KEYS[2], ARGV[1]) .. ':claims')
return settled
