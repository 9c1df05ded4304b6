-- Persist a batch of snapshots of ONE region, deduplicated, and acknowledge them.
--
-- Runs inside MULTI ... EXEC, right after an MSET that wrote the batch's payloads to staging keys:
--   MULTI; MSET incoming_1 payload_1 ... incoming_n payload_n; EVALSHA persist ...; EXEC
-- The payloads never pass through Lua: a 9 KB string handed to this script and written on
-- from it cost Redis ~20 µs of CPU (Lua's cost grows with every byte it is handed), twice
-- what the whole rest of this script costs per message. A persisted message's staging key is
-- RENAMEd to its by-id key (O(1), no bytes copied) and given its expiry; every other staging
-- key is deleted, so after EXEC none is left. The by-id key is thus written once, by the
-- message that persisted the snapshot: a later entry carrying the same snapshot id (a
-- redelivery, or a different payload under a reused id) never overwrites it. MULTI makes the
-- MSET and this script one unit: never one without the other.
--
-- KEYS[1] stream (the region's shard stream with --shard-by region: then EVERY key of the call
--         shares the region's hash tag and cluster slot)
-- KEYS[2] snapshot index (ZSET generated_at -> snapshot_id)   all of one region: one hash tag,
-- KEYS[3] latest pointer (snapshot_id)                         so one cluster slot
-- KEYS[4+3i], KEYS[5+3i], KEYS[6+3i]  dedup marker, by-id key, staging key of message i
-- ARGV[1] group, ARGV[2] "1" acknowledge what settled, "0" do not (``replay --range``
--         re-drives history the group has accounted for already), ARGV[3] dedup TTL s,
-- ARGV[4] retention s, ARGV[5] retention ms
-- ARGV[6+3i .. 8+3i]  entry id, snapshot id, generated_at ms of message i
--
-- The stream is declared in KEYS even when nothing is acknowledged: a key the script may
-- touch is always declared (cluster routing and ACL key patterns both rely on it).
--
-- Returns one status per message: "p" persisted, "d" duplicate (another snapshot owns the
-- bucket), "r" redelivered (this very snapshot is stored already), or "E<error>" when a write
-- failed; a failed message is NOT acknowledged, so it is delivered again.
--
-- Write order per message: by-id (the RENAME), index, latest, dedup marker LAST. Redis does not
-- roll a script back when a command fails half-way, so the order is what makes the marker a
-- commit record: a marker never exists without its data (the by-id key is written before
-- anything else), and a failed message leaves no marker to make its retry
-- look like a duplicate (upstream's bug). An index entry likewise proves the by-id key was
-- written, which recognizes a redelivery after the marker expired.
--
-- A snapshot is kept until generated_at + retention: the by-id key expires then, and the index
-- entry is pruned then, so a redelivery restores exactly the expiry it had.

local stream, index, latest = KEYS[1], KEYS[2], KEYS[3]
local group, ack = ARGV[1], ARGV[2] == '1'
local dedup_ttl, retention_s, retention_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
local n = (#ARGV - 5) / 3
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end

-- The latest pointer only moves forward in generated_at (ties broken by snapshot id, which is
-- time-sortable), whatever order parallel workers and replays persist snapshots in.
local cur_id, cur_gen = nil, nil
local function load_latest()
  local id = redis.pcall('GET', latest)
  if failed(id) then return id end
  if id then
    cur_id = id
    local s = redis.pcall('ZSCORE', index, id)
    if failed(s) then return s end
    cur_gen = tonumber(s) or -1  -- pruned from the index: older than anything retained
  end
  return nil
end
local latest_err = load_latest()

local function persist(dedup, byid, staged, sid, gen, expire_at)
  if expire_at <= now_ms then
    return {err = 'past retention: generated_at ' .. gen .. ' + retention is before now'}
  end
  local r = redis.pcall('RENAME', staged, byid)
  if failed(r) then
    return {err = 'staged payload missing: the MSET before this script did not write it (' .. r.err .. ')'}
  end
  r = redis.pcall('PEXPIREAT', byid, expire_at)
  if failed(r) then return r end
  r = redis.pcall('ZADD', index, gen, sid)
  if failed(r) then return r end
  if latest_err then return latest_err end
  if cur_id == nil or gen > cur_gen or (gen == cur_gen and sid > cur_id) then
    r = redis.pcall('SET', latest, sid, 'EX', retention_s)
    if failed(r) then return r end
    cur_id, cur_gen = sid, gen
  end
  r = redis.pcall('SET', dedup, sid, 'EX', dedup_ttl)
  if failed(r) then return r end
  return nil
end

local out, acks = {}, {}
for i = 0, n - 1 do
  local dedup, byid, staged = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local eid, sid, gen = ARGV[6 + 3 * i], ARGV[7 + 3 * i], tonumber(ARGV[8 + 3 * i])
  local expire_at = gen + retention_ms
  local status
  local marker = redis.pcall('GET', dedup)
  if failed(marker) then
    status = 'E' .. marker.err
  elseif marker == sid then
    status = 'r'
  elseif marker then
    status = 'd'
  else
    local score = redis.pcall('ZSCORE', index, sid)
    if failed(score) then
      status = 'E' .. score.err
    elseif score then
      status = 'r'  -- stored before; its marker expired (or a replay of old history)
    else
      local err = persist(dedup, byid, staged, sid, gen, expire_at)
      status = err and ('E' .. err.err) or 'p'
    end
  end
  -- Whatever happened above, no staging key outlives the call (a persisted one was renamed;
  -- DEL of a missing key does nothing). A failed message's MSET is sent again on its retry.
  if status ~= 'p' then redis.pcall('DEL', staged) end
  out[i + 1] = status
  if string.sub(status, 1, 1) ~= 'E' then acks[#acks + 1] = eid end
end

-- Prune index entries past retention, once per call.
redis.pcall('ZREMRANGEBYSCORE', index, '-inf', '(' .. (now_ms - retention_ms))

-- Acknowledged in slices: Lua's unpack() fails near 8,000 values, and a failure here, after
-- the writes above, would leave stored snapshots unacknowledged on every retry (the caller
-- also bounds a call to MAX_MESSAGES_PER_CALL messages; this keeps the script safe alone).
local ACK_SLICE = 1000
if ack then
  for from = 1, #acks, ACK_SLICE do
    local r = redis.pcall('XACK', stream, group, unpack(acks, from, math.min(from + ACK_SLICE - 1, #acks)))
    if failed(r) then out[#out + 1] = 'A' .. r.err end
  end
end
return out
