-- Move one entry to the dead-letter stream and acknowledge it, atomically: an entry is never
-- in both places and never in neither, and it is dead-lettered once.
--
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] ids already dead-lettered (ZSET)
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] the name of the delivery-count field (the format's
-- owner is consumer/dead_letters.py), ARGV[4..] field/value pairs of the dead-letter entry
--
-- Only an entry still pending for the group moves: if another consumer settled it meanwhile
-- (after a reclaim), it is not dead-lettered a second time. The delivery count is read here,
-- from the pending list itself, and recorded in the field ARGV[3]. An entry whose id is in
-- KEYS[3] was dead-lettered before: its group was lost and recreated from id 0, which reads
-- the whole stream again (stored snapshots come back as redeliveries, harmless); it is only
-- acknowledged, so the dead-letter stream holds each poisoned entry once.
--
-- Order matters, because Redis does not roll a script back when a command fails half-way: the
-- XADD comes first and the XACK only after it succeeded. A failed XADD (the dead-letter key
-- holds another type, out of memory, an ACL user without +xadd) leaves the entry pending; a
-- failed XACK removes the dead letter again. Either way the error is returned and the entry
-- is still pending, to be retried - never acknowledged and in no stream. The id is recorded
-- last: should that fail, the only loss is the once-guard of this one entry.
-- Returns the delivery count if moved, 0 if the entry was not pending, -1 if it had been
-- dead-lettered before (now acknowledged), or the error.
local function failed_at(command, r)
  -- Say which command failed, keeping Redis's error code first (callers classify by it).
  local code, rest = string.match(r.err, '^(%u+) (.*)$')
  if not code then code, rest = 'ERR', r.err end
  return redis.error_reply(code .. ' ' .. command .. ': ' .. rest)
end
local function ms_of(id)
  return tonumber(string.match(id, '^(%d+)')) or 0
end

local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(p) == 'table' and p.err then return failed_at('XPENDING ' .. KEYS[1], p) end
if #p == 0 then return 0 end
local seen = redis.pcall('ZSCORE', KEYS[3], ARGV[2])
if type(seen) == 'table' and seen.err then return failed_at('ZSCORE ' .. KEYS[3], seen) end
if seen then
  local acked = redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
  if type(acked) == 'table' and acked.err then return failed_at('XACK ' .. KEYS[1], acked) end
  return -1
end
local deliveries = p[1][4]
local id = redis.pcall('XADD', KEYS[2], '*', ARGV[3], deliveries, unpack(ARGV, 4))
if type(id) == 'table' and id.err then return failed_at('XADD ' .. KEYS[2], id) end
local acked = redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
if type(acked) == 'table' and acked.err then
  redis.pcall('XDEL', KEYS[2], id)
  return failed_at('XACK ' .. KEYS[1], acked)
end
redis.pcall('ZADD', KEYS[3], ms_of(ARGV[2]), ARGV[2])
-- Ids older than the stream's oldest entry can never be read again (trimmed): drop them.
local oldest = redis.pcall('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if type(oldest) == 'table' and not oldest.err and oldest[1] then
  redis.pcall('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ms_of(oldest[1][1]))
end
return deliveries
