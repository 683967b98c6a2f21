-- A consumer script: KEYS and ARGV[1..3] as prelude.lua says.
-- ARGV[4..] = the bodies the consumer holds, as it goes out on a new connection: every
-- other task of its in-flight list goes back to the ready list (to its claim end, marked
-- redelivered), as a close's would. Redis restarted from a snapshot while the consumer
-- lived (its idle link made again, its name kept) restores the list as it was then,
-- with tasks it settled since: acked by count in place of those it holds (a list of the
-- same length), or renewed with its lease for as long as it lived, their results (pushed
-- after the snapshot) lost, they never ran again. Returns the count of claims a settle by
-- count checks (prelude.lua's ``claimed``), counted: a settle sent before, run after it,
-- does nothing. False without a lease (swept): the count goes with the lease, and the
-- consumer settles by body until its next claim.

local mine, back, want = {}, {}, {}
for i = 4, #ARGV do want[ARGV[i]] = (want[ARGV[i]] or 0) + 1 end
for _, body in ipairs(redis.call('LRANGE', KEYS[5], '0', '-1')) do
  if (want[body] or 0) > 0 then
    want[body] = want[body] - 1
    mine[#mine + 1] = body
  else
    back[#back + 1] = body
  end
end
if #back > 0 then
  writable(KEYS[1], KEYS[4])
  redis.call('DEL', KEYS[5])
  push('RPUSH', KEYS[5], mine)
  push('RPUSH', KEYS[1], back)
  push('SADD', KEYS[4], back)
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return false end
return claimed(KEYS[2], ARGV[1])
