-- Gives an idempotency lease back after a failed delivery, only if it is still
-- this delivery's (it may have expired and been taken by a copy meanwhile).
--
-- KEYS[1] the marker; ARGV[1] this delivery's lease token
--
-- Returns 1 released, 0 not ours (any more)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
