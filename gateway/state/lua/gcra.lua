-- GCRA (generic cell rate algorithm), written once for every script; gateway/state/memory.py is
-- its Python twin, held equal by tests/integration/test_redis_conformance.py.
-- All times are integer microseconds (exact in a Lua double up to 2^53).
-- A cell allows a request when, after adding it, it is no more than `burst` intervals ahead of
-- now. Returns the cell's new theoretical arrival time, or nil and the microseconds until a retry
-- passes (a refused request does not move the cell).
local function gcra(tat, now, interval, burst)
  if tat == nil or tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    return nil, allow_at - now
  end
  return new_tat, 0
end

-- A cell is kept until it has refilled completely: after that it is equivalent to no key at all.
local function store_cell(key, tat, now)
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
end
