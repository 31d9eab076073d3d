-- Trims a stream toward its retention, but never past the first entry that a
-- group of the stream still needs: the lowest, over the groups, of the oldest
-- pending entry and the first entry after the last one delivered. Computed
-- and applied in one atomic step, so that no read or acknowledgement comes
-- between the bound and the trim. Redis 7 has no trimming that respects
-- groups (XADD/XTRIM ... ACKED came in 8.2, and its approximate form deleted
-- nothing until 8.6).
--
-- KEYS[1]  the stream
-- ARGV[1]  'len' (keep about ARGV[2] entries) or 'age' (ARGV[2] is the oldest
--          id to keep, from the clock: `<ms>-0`)
-- ARGV[2]  the length, or the id
-- ARGV[3]  most entries to delete in one call (bounds the time Redis spends)
--
-- Trimming is approximate (`~`: whole nodes only, never past the bound). By
-- length: the entries past the length and below the bound, at most as many
-- as are over the length (`LIMIT`), so the stream never shrinks below it.
--
-- Returns  the entries still over the length after the trim (0 if none, or
--          for 'age'): more than 0 means a group's backlog held the trim back,
--          or the limit did; the caller tries again later.

local stream, mode, cap = KEYS[1], ARGV[1], tonumber(ARGV[3])

if redis.call('EXISTS', stream) == 0 then
  return 0
end

local max_len
if mode == 'len' then
  max_len = tonumber(ARGV[2])
  if redis.call('XLEN', stream) <= max_len then
    return 0
  end
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function below(a_ms, a_seq, b_ms, b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end

-- The bound: the first entry some group still needs (none without groups).
local b_ms, b_seq
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, pending, last
  for i = 1, #g, 2 do
    local f = g[i]
    if f == 'name' then
      name = g[i + 1]
    elseif f == 'pending' then
      pending = tonumber(g[i + 1])
    elseif f == 'last-delivered-id' then
      last = g[i + 1]
    end
  end
  -- The entry after the last delivered one: the first not yet read.
  local ms, seq = parse(last)
  seq = seq + 1
  if pending > 0 then
    local p_ms, p_seq = parse(redis.call('XPENDING', stream, name)[2])
    if below(p_ms, p_seq, ms, seq) then
      ms, seq = p_ms, p_seq
    end
  end
  if b_ms == nil or below(ms, seq, b_ms, b_seq) then
    b_ms, b_seq = ms, seq
  end
end

local function id(ms, seq)
  return string.format('%.0f-%.0f', ms, seq)
end

if mode == 'len' then
  local over = redis.call('XLEN', stream) - max_len
  if b_ms == nil then
    redis.call('XTRIM', stream, 'MAXLEN', '~', max_len, 'LIMIT', math.min(over, cap))
  else
    redis.call('XTRIM', stream, 'MINID', '~', id(b_ms, b_seq), 'LIMIT', math.min(over, cap))
  end
  return math.max(redis.call('XLEN', stream) - max_len, 0)
end

local c_ms, c_seq = parse(ARGV[2])
if b_ms ~= nil and below(b_ms, b_seq, c_ms, c_seq) then
  c_ms, c_seq = b_ms, b_seq
end
redis.call('XTRIM', stream, 'MINID', '~', id(c_ms, c_seq), 'LIMIT', cap)
return 0
