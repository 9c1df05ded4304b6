-- Move one entry to the dead-letter stream and acknowledge it, atomically: an entry is never
-- in both places and never in neither.
--
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3..] field/value pairs of the dead-letter entry
--
-- Only an entry still pending for the group moves: if another consumer settled it meanwhile
-- (after a reclaim), it is not dead-lettered a second time. The delivery count is read here,
-- from the pending list itself, and recorded as dlq_deliveries.
-- Returns the delivery count if moved, 0 if the entry was not pending.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
local deliveries = p[1][4]
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', 'dlq_deliveries', deliveries, unpack(ARGV, 3))
return deliveries
