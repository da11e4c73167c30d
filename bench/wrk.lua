-- wrk script for bench/run.py: optional POST body, machine-readable summary.
-- WRK_POST_BYTES=N makes every request a POST of N bytes.
local post_bytes = tonumber(os.getenv("WRK_POST_BYTES") or "0")
if post_bytes > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("r", post_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RWSGI_BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
