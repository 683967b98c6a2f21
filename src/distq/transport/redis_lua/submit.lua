-- A master's script: a lone task's submit and the take's acknowledgement in one call
-- (RedisProducer.submit_then_results), where a submit of more is a transaction before
-- ack.lua. KEYS and ARGV[1..3] as ack.lua says; ARGV[4] = the task's body. It LPUSHes the
-- body onto the queue and counts it in state (``submitted``), then acknowledges as
-- ack.lua (put after this by distq.transport.redis_scripts), and returns what it returns.
-- Not flagged allow-oom: a full Redis refuses the LPUSH, its first write, so the script
-- stops having pushed, counted and acknowledged nothing, as a refused transaction; a
-- queue key of another type fails the LPUSH the same way. The next take acknowledges.

redis.call('LPUSH', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[4], 'submitted', 1)
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[2]) + {REPLY_GRACE_MS})
