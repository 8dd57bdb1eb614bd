-- wrk script for bench/post_throughput.py: POSTs a JSON body with a name unique per request.
-- Latency percentiles are printed in a line the script parses.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = id
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if os.getenv("BENCH_TOKEN") then
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
  end
end

function request()
  counter = counter + 1
  local body = string.format('{"name":"w%d-%d-%s"}', thread_id, counter, os.getenv("BENCH_TAG") or "x")
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d non2xx=%d seconds=%f p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.errors.status, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
