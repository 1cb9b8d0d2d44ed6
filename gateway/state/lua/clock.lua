-- Redis' own clock in integer microseconds, so every replica and worker agrees on "now".
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
