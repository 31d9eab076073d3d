-- Takes the idempotency marker of one envelope id for one delivery, checked
-- and done in one atomic step: two copies of an envelope can never both
-- take it, so they never run at the same time.
--
-- KEYS[1] the marker ({<stream>}:idem:<group>:<envelope id>)
-- ARGV[1] this delivery's lease token ("lease:<consumer>:<entry id>")
-- ARGV[2] lease length, ms (the visibility timeout: a holder that died frees
--         it when its entry can be reclaimed)
--
-- A marker whose value does not start with "lease:" means done (earlier
-- versions wrote "1" after a success, as this one does).
--
-- Returns  1  taken (or already ours: a restart under the same name)
--          0  done: this envelope was handled before
--         -1  held by another delivery right now
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if string.sub(v, 1, 6) == 'lease:' then
  return -1
end
return 0
