-- wrk script (protected): GET the paths listed in a file, round robin, each thread from its own
-- offset. A thread stops after its share of the fixed request count and prints "limit reached";
-- once every thread has, the evaluator sends wrk SIGINT (wrk otherwise sleeps out its -d), and
-- done() prints one JSON line the evaluator reads.
--   wrk -t T -c C -d MAX_S -s load.lua URL -- PATHS_FILE PER_THREAD
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  paths = {}
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  limit = tonumber(args[2])
  index = (tid * 7919) % #paths
  seen = 0
  prepared = {}
  for i, p in ipairs(paths) do
    prepared[i] = wrk.format("GET", p)
  end
end

function request()
  index = index % #paths + 1
  return prepared[index]
end

function response(status, headers, body)
  seen = seen + 1
  if seen == limit then
    io.write("limit reached\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
