-- A consumer script: KEYS and ARGV[1..3] as prelude.lua says.
-- A consumer's close: its in-flight tasks go back to the ready list (to its claim end,
-- marked redelivered) and its lease is removed. Returns nothing.

requeue_all(KEYS[5], KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
