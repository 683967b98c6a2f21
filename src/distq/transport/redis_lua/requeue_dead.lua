-- KEYS = dead, ready; ARGV = pairs (dead letter, task body), oldest letter first. Moves
-- each letter whose turn it is (still the oldest) to ``ready`` as its body; stops at the
-- first one someone else took. Returns how many moved. The task is pushed before its
-- letter is popped: a push that fails (``ready`` made another type meanwhile) stops the
-- script with the letter still there (a script's error undoes none of its writes).

local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LINDEX', KEYS[1], '0') ~= ARGV[i] then break end
  redis.call('LPUSH', KEYS[2], ARGV[i + 1])
  redis.call('LPOP', KEYS[1])
  moved = moved + 1
end
return moved
