-- wrk script: POST pre-minted token requests to /oauth2/token, one body per line of a file.
--   wrk -t1 -c32 -d5s -s tokens.lua http://127.0.0.1:PORT -- BODIES MODE RATE THREADS [PATH [MAX]]
-- MODE "once": each body is sent once (unique assertions, the replay cache must accept them);
--   the thread stops when its bodies run out, so a run is bounded in requests as well as time.
-- MODE "cycle": wrap around (rejected requests, where repeats cost the same).
-- RATE (requests/s, per thread) > 0 (the paced variant, which sets delay = paced_delay): paced, open-loop-like arrivals (see delay() below).
-- PATH: the token endpoint path (default /oauth2/token).
-- MAX: requests per thread after which the thread stops (0: no cap besides -d), a safety bound.
-- THREADS: the -t value, so each thread takes its own share of the bodies.
-- done() prints one line "BENCH_RESULT {json}" that bench/loadgen.py reads.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local bodies, n, i = {}, 0, 0
local once = true
-- Globals, not locals: done() reads them from each thread with thread:get().
statuses = {}
exhausted = 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local path = "/oauth2/token"
local max_requests = 0
local sent = 0
local rate_per_ms = nil
local next_slot = nil
local now_ms = nil

function init(args)
  local total = tonumber(args[4] or "1")
  local index = thread_index or 0
  local line_no = 0
  for line in io.lines(args[1]) do
    if line_no % total == index then
      n = n + 1
      bodies[n] = line
    end
    line_no = line_no + 1
  end
  once = (args[2] or "once") == "once"
  path = args[5] or path
  max_requests = tonumber(args[6] or "0")
  local rate = tonumber(args[3] or "0")
  if rate > 0 then
    rate_per_ms = rate / 1000.0
    local ffi = require("ffi")
    ffi.cdef [[
      typedef struct { long tv_sec; long tv_usec; } bench_timeval;
      int gettimeofday(bench_timeval *tv, void *tz);
    ]]
    local tv = ffi.new("bench_timeval")
    now_ms = function()
      ffi.C.gettimeofday(tv, nil)
      return tonumber(tv.tv_sec) * 1000.0 + tonumber(tv.tv_usec) / 1000.0
    end
    math.randomseed(os.time() + index)
  end
end

function request()
  sent = sent + 1
  if max_requests > 0 and sent > max_requests then
    wrk.thread:stop()
  end
  i = i + 1
  if i > n then
    if once then
      exhausted = exhausted + 1
      wrk.thread:stop()
      i = n
    else
      i = 1
    end
  end
  return wrk.format("POST", path, headers, bodies[i])
end

function response(status, hdrs, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

-- Paced runs: one Poisson arrival schedule per thread; a connection that comes free takes the next
-- arrival slot and waits for it. wrk measures latency from the write, so as long as a connection is
-- free at each slot (enough connections for the rate) the percentiles are those of an open load.
function paced_delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now then
    next_slot = now
  end
  local slot = next_slot
  next_slot = next_slot + (-math.log(1.0 - math.random()) / rate_per_ms)
  return math.floor(slot - now + 0.5)
end

local function json_escape(s)
  return '"' .. tostring(s):gsub('[%c"\\]', '') .. '"'
end

function done(summary, latency, requests)
  local counts = {}
  local ran_out = 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for k, v in pairs(s) do counts[k] = (counts[k] or 0) + v end
    ran_out = ran_out + (t:get("exhausted") or 0)
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, json_escape(k) .. ":" .. v) end
  local e = summary.errors
  local out = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},'
      .. '"statuses":{%s},"exhausted":%d}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), table.concat(parts, ","), ran_out)
  io.write("BENCH_RESULT " .. out .. "\n")
end
