-- Puts one dead letter back onto its stream as a new entry and removes it from the
-- dead-letter stream, atomically: never lost, never in both.
--
-- KEYS[1] dead-letter stream, KEYS[2] stream (same hash slot)
-- ARGV[1] dead-letter entry id, ARGV[2] number of trailing metadata fields,
-- ARGV[3] name of the field that holds a very wide entry's fields as JSON
--
-- Returns the new entry id, false if there is no such dead letter, or 1 if its
-- fields are kept as JSON (too many to pass to XADD from Lua): the caller then
-- replays it itself.
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then
  return false
end
local fields = e[1][2]
local keep = #fields - 2 * tonumber(ARGV[2])
if keep < 2 then
  return redis.error_reply('ERR dead letter ' .. ARGV[1] .. ' has no original fields')
end
if keep == 2 and fields[1] == ARGV[3] then
  return 1
end
local args = {KEYS[2], '*'}
for i = 1, keep do
  table.insert(args, fields[i])
end
local id = redis.call('XADD', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
