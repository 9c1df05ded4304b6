-- Persist a batch of snapshots of ONE region, deduplicated, and acknowledge them.
--
-- Runs inside MULTI ... EXEC, right after an MSET that wrote the batch's payloads to staging keys:
--   MULTI; MSET incoming_1 payload_1 ... incoming_n payload_n; EVALSHA persist ...; EXEC
-- The payloads never pass through Lua: a 9 KB string handed to this script and written on
-- from it cost Redis ~20 µs of CPU (Lua's cost grows with every byte it is handed). A
-- persisted message's staging key is RENAMEd to its by-id key (O(1), no bytes copied) and given
-- its expiry; every other staging key is deleted, so after EXEC none is left. The by-id key is
-- thus written once, by the message that persisted the snapshot: a later entry carrying the
-- same snapshot id (a redelivery, or a different payload under a reused id) never overwrites
-- it. MULTI makes the MSET and this script one unit: never one without the other.
--
-- What a message costs here is what the guarantee needs and no more: the batch's markers are
-- read with ONE MGET and its snapshot ids looked up in the index with ONE ZMSCORE, the index
-- written with ONE ZADD and `latest` at most once; per persisted message remain the RENAME, its
-- PEXPIREAT and its marker. (Each redis.call costs ~1 µs of Redis CPU whatever it does: one
-- per message for each of seven steps was most of what a message cost Redis.)
--
-- KEYS[1] stream (the region's shard stream with --shard-by region: then EVERY key of the call
--         shares the region's hash tag and cluster slot)
-- KEYS[2] snapshot index (ZSET generated_at -> snapshot_id)   all of one region: one hash tag,
-- KEYS[3] latest pointer (snapshot_id)                         so one cluster slot
-- KEYS[1+3i], KEYS[2+3i], KEYS[3+3i]  dedup marker, by-id key, staging key of message i (1..n)
-- ARGV[1] group, ARGV[2] "1" acknowledge what settled, "0" do not (``replay --range``
--         re-drives history the group has accounted for already), ARGV[3] dedup window ms,
-- ARGV[4] retention s, ARGV[5] retention ms
-- ARGV[3+3i .. 5+3i]  entry id, snapshot id, generated_at ms of message i (1..n)
--
-- The stream is declared in KEYS even when nothing is acknowledged: a key the script may
-- touch is always declared (cluster routing and ACL key patterns both rely on it).
--
-- Returns one status per message: "p" persisted, "d" duplicate (another snapshot owns the
-- bucket), "r" redelivered (this very snapshot is stored already), or "E<error>" when a write
-- failed; a failed message is NOT acknowledged, so it is delivered again. Then one "A<error>"
-- per failed XACK.
--
-- Write order: every persisted message's by-id key (the RENAME), then the index, then
-- `latest`, then the dedup markers LAST. Redis does not roll a script back when a command
-- fails half-way, so the order is what makes the marker a commit record: a marker never
-- exists without its data, and a failed message leaves no marker to make its retry look like
-- a duplicate (upstream's bug). An index entry likewise proves the by-id key was written,
-- which recognizes a redelivery whose marker is gone (a failed call, an outside DEL): such a
-- redelivery takes its bucket back (its marker is written again), so a duplicate after it is
-- still a duplicate.
--
-- A snapshot is kept until generated_at + retention: the by-id key expires then, and the index
-- entry is pruned then (first thing in every call, so an index entry always has its by-id key).
-- A marker lives until the end of its bucket + retention: until then an entry of that bucket
-- is accepted (later ones are dead-lettered as past-retention), so a duplicate, however late
-- it comes, finds the marker.

local stream, index, latest = KEYS[1], KEYS[2], KEYS[3]
local group, ack = ARGV[1], ARGV[2] == '1'
local window_ms, retention_s, retention_ms = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local n = (#ARGV - 5) / 3
if n < 1 then return {} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end

-- Index entries past retention first: their by-id keys have expired (Redis expires a key
-- once now > its time: the same bound).
redis.pcall('ZREMRANGEBYSCORE', index, '-inf', '(' .. string.format('%d', now_ms - retention_ms))

local out, gens, sids, dedups = {}, {}, {}, {}
-- Numbers go back to Redis as the strings they came as, or formatted as integers: Redis
-- formats a Lua number it is handed with %.17g, which cost ~4% of its CPU here.
for i = 1, n do
  dedups[i], sids[i], gens[i] = KEYS[1 + 3 * i], ARGV[4 + 3 * i], tonumber(ARGV[5 + 3 * i])
end
-- A marker key of another type reads as absent here (MGET), and is replaced by the marker.
local markers = redis.pcall('MGET', unpack(dedups))
local scores = redis.pcall('ZMSCORE', index, unpack(sids))
local markers_err = failed(markers) and markers.err
local scores_err = failed(scores) and scores.err

-- Which message persists, and which is a duplicate or a redelivery, also among the messages
-- of this call: two entries of one bucket (the first wins), or of one snapshot id.
-- persisted: the i persisted; found: the i found stored (in the index); retaken: those of
-- them whose bucket had no marker (written again); here: snapshot id -> the i that stored it;
-- taken: marker key -> the i that took the bucket in this call; dep: i -> the i its verdict
-- rests on (failed with it, below); best_*: the candidate for `latest`.
local persisted, found, retaken, here, taken, dep = {}, {}, {}, {}, {}, {}
local best_i, best_gen = nil, nil
local function candidate(i, gen)
  if best_i == nil or gen > best_gen or (gen == best_gen and sids[i] > sids[best_i]) then
    best_i, best_gen = i, gen
  end
end
for i = 1, n do
  local sid, gen, dedup = sids[i], gens[i], dedups[i]
  -- The bucket's marker as it stands now: written by this call, or found at its start.
  local by = taken[dedup]
  local owner = (by and sids[by]) or (not markers_err and markers[i])
  if markers_err then
    out[i] = 'E' .. markers_err
  elseif owner == sid then
    out[i], dep[i] = 'r', by
  elseif owner then
    out[i], dep[i] = 'd', by  -- another snapshot owns the bucket (even if this one is stored)
  elseif here[sid] then
    out[i], dep[i] = 'r', here[sid]  -- stored by this call, from an entry of another bucket
  elseif scores_err then
    out[i] = 'E' .. scores_err  -- only the index can tell
  elseif scores[i] then
    -- Stored before, its marker gone: the bucket is taken back, if the stored snapshot is of
    -- this bucket (the same id under another generated_at is no claim on this one).
    out[i] = 'r'
    found[#found + 1] = i
    local stored_gen = tonumber(scores[i])
    if stored_gen == gen then retaken[#retaken + 1], taken[dedup] = i, i end
    candidate(i, stored_gen)
  elseif gen + retention_ms <= now_ms then
    out[i] = 'Epast retention: generated_at ' .. gen .. ' + retention is before now'
  else
    local r = redis.pcall('RENAME', KEYS[3 + 3 * i], KEYS[2 + 3 * i])
    if failed(r) then
      out[i] = 'Estaged payload missing: the MSET before this script did not write it ('
        .. r.err .. ')'
    else
      r = redis.pcall('PEXPIREAT', KEYS[2 + 3 * i], string.format('%d', gen + retention_ms))
      if failed(r) then
        out[i] = 'E' .. r.err
      else
        out[i] = 'p'
        persisted[#persisted + 1], here[sid], taken[dedup] = i, i, i
      end
    end
  end
end

-- A step failing after the by-id writes fails what it concerns, and every message whose
-- verdict rested on one of those: no marker is written for them, and their retry finds what
-- was stored (or writes it again).
local function fail(list, err)
  for _, i in ipairs(list) do out[i] = 'E' .. err end
  for i = 1, n do
    if dep[i] and string.sub(out[dep[i]], 1, 1) == 'E' then out[i] = 'E' .. err end
  end
end

if #persisted > 0 then
  local members = {}
  for _, i in ipairs(persisted) do
    members[#members + 1], members[#members + 2] = ARGV[5 + 3 * i], sids[i]
  end
  local r = redis.pcall('ZADD', index, unpack(members))
  if failed(r) then
    fail(persisted, r.err)
    persisted = {}
  end
  for _, i in ipairs(persisted) do candidate(i, gens[i]) end
end

-- The latest pointer only moves forward in generated_at (ties broken by snapshot id, which is
-- time-sortable), whatever order parallel workers and replays persist snapshots in. A
-- snapshot found stored is a candidate too, and fails with the rest when `latest` cannot be
-- written: a retry repairs a `latest` an earlier failure left behind.
if best_i ~= nil then
  local err, newer = nil, true
  local cur = redis.pcall('GET', latest)
  if failed(cur) then
    err = cur.err
  elseif cur then
    local s = redis.pcall('ZSCORE', index, cur)
    if failed(s) then
      err = s.err
    else
      local cur_gen = tonumber(s) or -1  -- pruned from the index: older than anything retained
      newer = best_gen > cur_gen or (best_gen == cur_gen and sids[best_i] > cur)
    end
  end
  if not err and newer then
    local r = redis.pcall('SET', latest, sids[best_i], 'EX', retention_s)
    if failed(r) then err = r.err end
  end
  if err then
    fail(persisted, err)
    fail(found, err)
    persisted, retaken = {}, {}
  end
end

-- The markers, last: until the end of the bucket + retention (see the top).
local function mark(list)
  for _, i in ipairs(list) do
    local expire_at = (math.floor(gens[i] / window_ms) + 1) * window_ms + retention_ms
    local r = redis.pcall('SET', dedups[i], sids[i], 'PXAT', string.format('%d', expire_at))
    if failed(r) then out[i] = 'E' .. r.err end
  end
end
mark(persisted)
mark(retaken)

-- No staging key outlives the call (a persisted one was renamed). A failed message's MSET is
-- sent again on its retry.
local leftover, acks = {}, {}
for i = 1, n do
  if out[i] ~= 'p' then leftover[#leftover + 1] = KEYS[3 + 3 * i] end
  if string.sub(out[i], 1, 1) ~= 'E' then acks[#acks + 1] = ARGV[3 + 3 * i] end
end
if #leftover > 0 then redis.pcall('DEL', unpack(leftover)) end

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
