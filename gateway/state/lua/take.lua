-- One request on every cell, all or nothing: KEYS = the cells; ARGV = interval_us, burst per cell.
-- Returns {allowed, retry_us, refused cell (1-based, 0 = none)}.
local now = now_us()
local tats = {}
for i = 1, #KEYS do
  local tat, retry = gcra(tonumber(redis.call('GET', KEYS[i])), now, tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]))
  if tat == nil then
    return {0, retry, i}
  end
  tats[i] = tat
end
for i = 1, #KEYS do
  store_cell(KEYS[i], tats[i], now)
end
return {1, 0, 0}
