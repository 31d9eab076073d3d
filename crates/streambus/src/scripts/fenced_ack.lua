-- Acknowledges entries of a partition only while the caller holds the
-- partition's owner lease: a paused old owner cannot acknowledge after a new
-- owner took over (the check and the XACK are one atomic step).
--
-- KEYS[1] the partition stream; KEYS[2] its lease (same slot)
-- ARGV[1] the holder's token; ARGV[2] the group; ARGV[3..] entry ids
--
-- Returns the number acknowledged, or -1 when the lease is not this token's
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
return redis.call('XACK', KEYS[1], ARGV[2], unpack(ARGV, 3))
