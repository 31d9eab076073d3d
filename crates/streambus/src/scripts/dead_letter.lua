-- Moves one pending entry to the dead-letter stream and acknowledges it, in one
-- atomic step: a crash can neither lose it nor leave it in both places.
--
-- KEYS[1] stream, KEYS[2] dead-letter stream (same hash slot: {<stream>}:dlq)
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer doing the move,
-- ARGV[4] min idle ms: the move is allowed if ARGV[3] owns the entry, or if the
--         entry has been idle at least this long (-1: only the owner may move it),
-- ARGV[5] reason, ARGV[6] dead-letter MAXLEN (0: no trimming)
--
-- The metadata fields come after the original fields, so a reader (and replay)
-- takes the last occurrence of each name even if the original had the same name.
--
-- Returns 1 moved, 2 entry no longer in the stream (acknowledged, nothing to keep),
-- 0 not pending any more (someone else acknowledged or moved it), -1 owned by
-- another live consumer.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then
  return 0
end
local owner, idle, deliveries = p[1][2], tonumber(p[1][3]), p[1][4]
local min_idle = tonumber(ARGV[4])
if owner ~= ARGV[3] and (min_idle < 0 or idle < min_idle) then
  return -1
end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 2
end
local args = {KEYS[2]}
local maxlen = tonumber(ARGV[6])
if maxlen > 0 then
  table.insert(args, 'MAXLEN')
  table.insert(args, '~')
  table.insert(args, maxlen)
end
table.insert(args, '*')
local fields = e[1][2]
if #fields > 7000 then
  -- Lua's unpack() stops at ~8000 values: keep a very wide entry's fields as
  -- one JSON array instead (streambus decodes it back when listing or replaying).
  table.insert(args, 'fields_json')
  table.insert(args, cjson.encode(fields))
else
  for _, v in ipairs(fields) do
    table.insert(args, v)
  end
end
for _, kv in ipairs({
  {'reason', ARGV[5]}, {'group', ARGV[1]}, {'consumer', owner},
  {'deliveries', tostring(deliveries)}, {'source_id', ARGV[2]},
  {'source_stream', KEYS[1]},
}) do
  table.insert(args, kv[1])
  table.insert(args, kv[2])
end
redis.call('XADD', unpack(args))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
