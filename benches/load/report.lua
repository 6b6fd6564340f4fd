-- wrk `done()` hook for benches/load/run.sh: one machine-readable line with
-- what wrk's own summary lacks (p99.9) and what the script needs.
-- RESULT <requests> <duration_us> <p50_us> <p99_us> <p999_us> <connect> <read> <write> <status> <timeout>
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect, e.read, e.write, e.status, e.timeout))
end
