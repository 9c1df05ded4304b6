-- Move one dead-letter entry back onto the stream with its original fields, removing it from
-- the dead-letter stream in the same step (never in both, never in neither).
--
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV[1] dead-letter entry id, ARGV[2..] the original field/value pairs
-- Returns the new stream entry id, or false if the dead-letter entry is gone (replayed already).
if redis.call('XDEL', KEYS[2], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
