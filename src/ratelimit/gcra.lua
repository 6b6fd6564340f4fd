-- GCRA over every window of one key, all-or-nothing, in one round trip.
--
-- KEYS[i]  the theoretical arrival time (TAT) of window i, in microseconds
--          since the Unix epoch; all keys carry the same {hash tag}.
-- ARGV[2i-1], ARGV[2i]
--          the emission interval T and the tolerance tau = (burst - 1) * T
--          of window i, in microseconds.
--
-- Returns {allowed (1 or 0), retry_after_us,
--          remaining_1, reset_1_us, remaining_2, reset_2_us, ...}.
--
-- Time is Redis's own (TIME), so the gateways' clocks never matter. A key
-- expires when its TAT passes: from then on it is indistinguishable from a
-- key never seen. Numbers stay below 2^53, so Lua's doubles are exact.

-- Effects replication (the default since Redis 5) lets a script that reads
-- TIME write; older servers need to be asked for it.
if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local n = #KEYS
local tats = {}
local retry = 0

for i = 1, n do
  local tau = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then
    tat = now
  end
  tats[i] = tat
  local wait = tat - tau - now
  if wait > retry then
    retry = wait
  end
end

local allowed = retry == 0
local out = { allowed and 1 or 0, retry }

for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tats[i]
  if allowed then
    tat = tat + t
    local ttl_ms = math.ceil((tat - now) / 1000)
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl_ms))
  end
  local remaining = math.floor((now + tau + t - tat) / t)
  if remaining < 0 then
    remaining = 0
  end
  out[2 * i + 1] = remaining
  out[2 * i + 2] = tat - now
end

return out
