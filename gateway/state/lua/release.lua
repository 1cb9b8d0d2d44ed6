-- Undo one admit attempt whose answer the gateway never received (a timeout): the request was
-- refused, so it must leave nothing behind. KEYS and ARGV as admit.lua (ARGV[4] unused).
-- If the attempt ran, its jti is forgotten and its quota given back; if it has not run yet, the
-- tombstone makes it a no-op when it does. Another attempt's record is never touched.
local seen = redis.call('GET', KEYS[1])
if seen and seen ~= ARGV[2] then
  return 0
end
if seen and #KEYS == 2 then
  local tat = tonumber(redis.call('GET', KEYS[2]))
  if tat then
    redis.call('SET', KEYS[2], string.format('%.0f', tat - tonumber(ARGV[3])), 'KEEPTTL')
  end
end
redis.call('SET', KEYS[1], 'x' .. ARGV[2], 'PX', ARGV[1])
return 1
