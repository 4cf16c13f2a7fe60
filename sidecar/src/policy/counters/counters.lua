-- Tollgate's counters, one call at a time: checks that what its decision read still holds,
-- then reserves what the decision allows, all or none.
--
-- Each counter is a string holding its count in the current window (calendar-aligned, by this
-- server's clock), set to expire when the window ends: a key that exists is this window's.
--
-- A key that is missing may also be one the store lost (FLUSHALL, a failover that dropped
-- writes): counting again from zero would let a window's limit run twice. So the workload's
-- keys carry a sequence, bumped by every reservation and never expiring, and each proxy sends
-- the highest it has seen: a sequence lower than that means the store lost writes, and the
-- moment is kept (`lost`). A window that began at or before that moment cannot be counted
-- with certainty: its calls are refused until it ends (status 3).
--
-- KEYS  the counters involved, then the sequence and the loss marker; they share a hash tag,
--       so one Redis Cluster slot.
-- ARGV  R, then R reads of 5: key index, window (s), check, a, b
--         check 0: the value must still be a (a `state.` condition read it)
--               1: a more must still not fit under b (a limit was full)
--               2: a more must still fit under b (a limit had room, and is not reserved now)
--       then reservations of 4: key index, window (s), amount, max (-1: none)
--       then the highest sequence this proxy has seen
-- Returns {0, now, seq, R values, then each reservation's new value}   reserved
--         {1, now, seq, R values}                                       a read no longer holds
--         {2, now, seq, index of the full reservation (from 0), R values}
--         {3, now, seq, 0 (a read) or 1 (a reservation), its index}     its window was lost
local now = tonumber(redis.call('TIME')[1])
local nk = #KEYS
local seq_key, lost_key = KEYS[nk - 1], KEYS[nk]
local seq = tonumber(redis.call('GET', seq_key) or '0')
local seen = tonumber(ARGV[#ARGV])
local lost = tonumber(redis.call('GET', lost_key) or '-1')
if seq < seen then
  -- Writes this proxy saw are gone. Keep the sequence where it was seen, so the next proxy to
  -- look finds it whole, and the moment, for two days (longer than any window).
  lost = now
  seq = seen
  redis.call('SET', seq_key, string.format('%d', seq))
  redis.call('SET', lost_key, string.format('%d', lost), 'EX', 172800)
end
local r = tonumber(ARGV[1])
local n = (#ARGV - 2 - r * 5) / 4
local function window_lost(w)
  return lost >= now - now % w
end
for i = 0, r - 1 do
  if window_lost(tonumber(ARGV[2 + i * 5 + 1])) then
    return {3, now, seq, 0, i}
  end
end
for j = 0, n - 1 do
  if window_lost(tonumber(ARGV[2 + r * 5 + j * 4 + 1])) then
    return {3, now, seq, 1, j}
  end
end
local values = {}
local stale = false
for i = 0, r - 1 do
  local b = 2 + i * 5
  local v = tonumber(redis.call('GET', KEYS[tonumber(ARGV[b])]) or '0')
  local check, a, max = ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if (check == '0' and v ~= a) or (check == '1' and v + a <= max) or (check == '2' and v + a > max) then
    stale = true
  end
  values[#values + 1] = v
end
if stale then
  return {1, now, seq, unpack(values)}
end
local pending, ends, order, after = {}, {}, {}, {}
for j = 0, n - 1 do
  local b = 2 + r * 5 + j * 4
  local k, w = tonumber(ARGV[b]), tonumber(ARGV[b + 1])
  local amount, max = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local cur = pending[k]
  if cur == nil then
    cur = tonumber(redis.call('GET', KEYS[k]) or '0')
    order[#order + 1] = k
  end
  local total = cur + amount
  if max >= 0 and total > max then
    return {2, now, seq, j, unpack(values)}
  end
  pending[k] = total
  ends[k] = (now - now % w + w) * 1000
  after[#after + 1] = total
end
for _, k in ipairs(order) do
  redis.call('SET', KEYS[k], string.format('%d', pending[k]), 'PXAT', ends[k])
end
if #order > 0 then
  seq = seq + 1
  redis.call('SET', seq_key, string.format('%d', seq))
end
for _, v in ipairs(after) do
  values[#values + 1] = v
end
return {0, now, seq, unpack(values)}
