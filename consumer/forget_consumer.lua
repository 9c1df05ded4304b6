-- Delete a consumer from the group only if it holds no pending entries and has been idle at
-- least ARGV[3] ms. Checked and done in one step: XGROUP DELCONSUMER drops the consumer's
-- pending entries with it, so a consumer that picked up work between a check and a delete
-- would lose that work.
--
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] minimum idle ms
-- Returns 1 if deleted, 0 if kept.
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return 0 end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name == ARGV[2] then
    if idle < tonumber(ARGV[3]) then return 0 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
