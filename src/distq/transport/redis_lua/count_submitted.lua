-- Submit's count, in the transaction after its LPUSHes (KEYS = ready, state; ARGV = how
-- many bodies, state's time to live): only if those succeeded (a queue key of another
-- type fails them, and a transaction goes on past a failed command). Sent by EVAL: it is
-- small, and cannot meet NOSCRIPT inside the transaction.

if redis.call('TYPE', KEYS[1]).ok ~= 'list' then return 0 end
redis.call('HINCRBY', KEYS[2], 'submitted', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
