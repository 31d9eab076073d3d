-- The member registry of a partitioned group: a sorted set of member token to
-- last-seen time, by the server's clock (so members on hosts with skewed
-- clocks agree on who is alive).
--
-- KEYS[1] the registry; ARGV[1] the member's token; ARGV[2] its TTL (ms);
-- ARGV[3] 'beat' (join or stay) or 'leave'
--
-- A member is dropped once it has not been seen for its own TTL, which its
-- token starts with (`<ttl_ms>:...`): members with different lease times do
-- not drop each other early.
--
-- Returns {now_ms, token1, seen1, token2, seen2, ...} of the live members
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
-- No expiry on the key: while the registry exists, monitors know the group is
-- leased (and report partitions without an owner after every member died).
-- Redis deletes it when the last member leaves gracefully.
local out = {now}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local token, seen = all[i], tonumber(all[i + 1])
  local ttl = tonumber(string.match(token, '^(%d+):')) or tonumber(ARGV[2])
  if seen + ttl < now then
    redis.call('ZREM', KEYS[1], token)
  else
    out[#out + 1] = token
    out[#out + 1] = all[i + 1]
  end
end
return out
