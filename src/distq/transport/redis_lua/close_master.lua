-- A master's script. KEYS = ready, masters, results, state; ARGV[1] = the result
-- list's name (KEYS[3]), ARGV[2] = the master's time to live, ms.
-- A master's close: its registration removed, its result list and state deleted.

redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
