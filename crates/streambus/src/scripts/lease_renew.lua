-- Renews a partition's owner lease, only if the caller still holds it.
--
-- KEYS[1] the lease; ARGV[1] the holder's token; ARGV[2] the lease time (ms)
--
-- Returns 1 renewed, 0 not held by this token (expired, taken by another)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
