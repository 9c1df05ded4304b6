-- Move one entry to the dead-letter stream and acknowledge it, atomically: an entry is never
-- in both places and never in neither.
--
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3..] field/value pairs of the dead-letter entry
--
-- Acks first: if the entry is no longer pending for the group (another consumer settled it
-- after a reclaim), it is not dead-lettered a second time. Returns 1 if moved, 0 if not pending.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return 1
