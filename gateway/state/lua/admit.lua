-- Replay check, quota and jti record in one atomic step (a replayed jti spends no quota; a refused
-- request records nothing). KEYS[1] the jti, KEYS[2] the client's quota cell (optional);
-- ARGV = ttl_ms, token (this attempt; never starts with 'x')[, interval_us, burst].
-- Returns {status, retry_us}: 1 admitted (jti recorded as the token, quota spent), 0 over quota,
-- 2 replayed, 3 this attempt was released before it ran (see release.lua): nothing done.
-- A value 'x' .. token is a tombstone: that attempt is void, any other attempt may record the jti.
local seen = redis.call('GET', KEYS[1])
if seen then
  if seen == 'x' .. ARGV[2] then
    return {3, 0}
  end
  if string.sub(seen, 1, 1) ~= 'x' then
    return {2, 0}
  end
end
if #KEYS == 2 then
  local now = now_us()
  local tat, retry = gcra(tonumber(redis.call('GET', KEYS[2])), now, tonumber(ARGV[3]), tonumber(ARGV[4]))
  if tat == nil then
    return {0, retry}
  end
  store_cell(KEYS[2], tat, now)
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return {1, 0}
