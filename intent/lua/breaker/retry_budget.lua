-- The fleet-wide retry budget of one downstream service (Finagle's RetryBudget), over the
-- calls its breaker counts (KEYS[3], one bucket per failure_window/BUCKETS seconds):
-- the last key, after the breaker's own: retries (hash: window bucket -> retries spent), in
-- the breaker's slot.
-- ARGV: failure_window, budget_window, percent, min_per_second, '1' to spend one ('0': look)
-- Retries in the last `span` buckets (budget_window rounded up to whole buckets) may reach
-- percent% of the calls in them plus min_per_second for each second they cover.
-- Reply: JSON [allowed '1'|'0', calls, retries, allowance, seconds until the next bucket]
local RETRIES = KEYS[#KEYS]
local window, budget_window = tonumber(ARGV[1]), tonumber(ARGV[2])
local percent, floor_per_second = tonumber(ARGV[3]), tonumber(ARGV[4])
local spend = ARGV[5] == '1'
local now = clock()
local width = window / BUCKETS
local span = math.max(1, math.min(BUCKETS, math.ceil(budget_window / width - 1e-9)))
local current = bucket_of(now, window)

local calls = in_buckets(CALLS, now, window, false, span) -- the breaker prunes its own
local retries = in_buckets(RETRIES, now, window, spend, span)
local allowance = percent / 100 * calls + floor_per_second * span * width
local allowed = retries + 1 <= allowance + 1e-9
if spend and allowed then
  redis.call('HINCRBY', RETRIES, string.format('%d', current), 1)
  redis.call('PEXPIRE', RETRIES, math.ceil((span + 1) * width * 1000))
  retries = retries + 1
end
return cjson.encode({allowed and '1' or '0', tostring(calls), tostring(retries), fmt(allowance),
  fmt((current + 1) * width - now)})
