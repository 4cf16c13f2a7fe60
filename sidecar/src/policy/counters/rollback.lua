-- Gives back what a call that did not run reserved, in the window it reserved in only (a
-- window that has ended is not touched: its key has expired, or belongs to the next window).
--
-- KEYS  the counters; ARGV  for each: window (s), the window's start, amount
local now = tonumber(redis.call('TIME')[1])
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 3
  local w, start, amount = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if now - now % w == start then
    local v = tonumber(redis.call('GET', key) or '0')
    if v > 0 then
      redis.call('SET', key, string.format('%d', math.max(v - amount, 0)), 'KEEPTTL')
    end
  end
end
return 0
