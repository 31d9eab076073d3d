-- Deletes a consumer from a group only if it is still idle and owns no pending
-- entry, checked and done in one atomic step: a consumer that read an entry (or
-- was handed one) after the caller looked at it is left alone, so
-- XGROUP DELCONSUMER can never drop a pending entry.
--
-- KEYS[1]  the stream
-- ARGV[1]  the group
-- ARGV[2]  the consumer
-- ARGV[3]  idle threshold, ms: the consumer is deleted only if its idle time
--          (ms since its last read or claim attempt) is above this
--
-- Returns  1  deleted
--          0  no such consumer (someone else deleted it)
--         -1  it has pending entries: not deleted
--         -2  it is active again (idle <= threshold): not deleted

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local threshold = tonumber(ARGV[3])

local found = false
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
  local name, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then
      name = c[i + 1]
    elseif c[i] == 'idle' then
      idle = tonumber(c[i + 1])
    end
  end
  if name == consumer then
    found = true
    if idle ~= nil and idle <= threshold then
      return -2
    end
    break
  end
end
if not found then
  return 0
end

if #redis.call('XPENDING', stream, group, '-', '+', 1, consumer) > 0 then
  return -1
end
redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
return 1
