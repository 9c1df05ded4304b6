-- Move one dead-letter entry back onto the stream with its original fields, removing it from
-- the dead-letter stream in the same step (never in both, never in neither).
--
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV[1] dead-letter entry id, ARGV[2..] the original field/value pairs
--
-- The XADD comes before the XDEL, and only an XADD that succeeded is followed by the XDEL:
-- Redis does not roll a script back when a command fails half-way, and deleting first would
-- lose the dead letter whenever the XADD fails (out of memory, an ACL user without +xadd).
-- Returns the new stream entry id, false if the dead-letter entry is gone (replayed already),
-- or the error (the dead letter is then left where it is).
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, 2))
if type(id) == 'table' and id.err then return id end
redis.call('XDEL', KEYS[2], ARGV[1])
return id
