-- Tollgate's counters, one call at a time: checks that what its decision read still holds,
-- then reserves what the decision allows, all or none.
--
-- Each counter is a string holding its count in the current window (calendar-aligned, by this
-- server's clock), set to expire when the window ends: a key that exists is this window's.
--
-- KEYS  the counters involved; they share a hash tag, so one Redis Cluster slot.
-- ARGV  R, then R reads of 5: key index, window (s), check, a, b
--         check 0: the value must still be a (a `state.` condition read it)
--               1: a more must still not fit under b (a limit was full)
--               2: a more must still fit under b (a limit had room, and is not reserved now)
--       then reservations of 4: key index, window (s), amount, max (-1: none)
-- Returns {0, now, R values, then each reservation's new value}   reserved
--         {1, now, R values}                                       a read no longer holds
--         {2, now, index of the full reservation (from 0), R values}
local now = tonumber(redis.call('TIME')[1])
local r = tonumber(ARGV[1])
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
  return {1, now, unpack(values)}
end
local pending, ends, order, after = {}, {}, {}, {}
local n = (#ARGV - 1 - r * 5) / 4
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
    return {2, now, j, unpack(values)}
  end
  pending[k] = total
  ends[k] = (now - now % w + w) * 1000
  after[#after + 1] = total
end
for _, k in ipairs(order) do
  redis.call('SET', KEYS[k], string.format('%d', pending[k]), 'PXAT', ends[k])
end
for _, v in ipairs(after) do
  values[#values + 1] = v
end
return {0, now, unpack(values)}
