-- KEYS = dead; ARGV = a mark, then pairs (place counted from the tail, letter). Each
-- letter still at its place, or up to 8 places further (letters pushed since), is
-- replaced by the mark, then every mark is removed in one LREM from the tail; in one
-- script, so no reader ever sees a mark. A letter moved meanwhile is left. How many.

local marked = 0
for i = 2, #ARGV, 2 do
  local at = tonumber(ARGV[i])
  for shift = 0, 8 do
    local found = redis.call('LINDEX', KEYS[1], at - shift)
    if found == ARGV[i + 1] then
      redis.call('LSET', KEYS[1], at - shift, ARGV[1])
      marked = marked + 1
      break
    end
    if not found then break end
  end
end
if marked > 0 then redis.call('LREM', KEYS[1], -marked, ARGV[1]) end
return marked
