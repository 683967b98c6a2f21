-- KEYS as prelude.lua says; ARGV = '', lease ms, in-flight key prefix: no consumer's.
-- Requeues expired leases and due retries (the transport's sweep: a master's idle wait;
-- consumers sweep at their claims). Returns nothing.

sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], now_ms(), KEYS[8], tonumber(ARGV[2]))
