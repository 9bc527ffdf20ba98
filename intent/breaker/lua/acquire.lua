-- Admit one guarded call or refuse it, in one step: forced states, open until the recovery
-- timeout (then the move to half-open), trial leases, and the throttle while failures pend.
-- ARGV[1] slot   ARGV[2] failure_threshold   ARGV[3] min_throughput   ARGV[4] failure_window
-- ARGV[5] recovery_timeout   ARGV[6] half_open_timeout (lease length)   ARGV[7] half_open_max_calls
-- ARGV[8] throttle_wait
-- Returns the common reply, then: 'ticket' | 'denied', the ticket kind or the denial,
-- until (when denied), the window bucket the call was counted in, '1' if the state was new.
local slot = ARGV[1]
local threshold, min_calls, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local recovery, lease, max_trials = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local grace = tonumber(ARGV[8])
local cfg = {window = ARGV[4], recovery = ARGV[5]}
local now = clock()
local c = load()
local fresh = not c.exists
if fresh then save(c, now, cfg) end
local transition = nil

local function answer(verdict, what, until_at, bucket)
  return reply(c, now, transition, nil,
    {verdict, what, fmt(until_at), string.format('%d', bucket or 0), fresh and '1' or '0'})
end

if c.forced == 'open' then return answer('denied', 'forced-open', nil) end
if c.forced == 'closed' then return answer('ticket', 'bypass', nil) end
if c.state == 'open' then
  if c.until_at and now < c.until_at then return answer('denied', 'open', c.until_at) end
  transition = move(c, 'half-open', 'recovery timeout elapsed')
  save(c, now, cfg)
end
if c.state == 'half-open' then
  release(slot)
  expire_leases(now)
  if redis.call('ZCARD', LEASES) >= max_trials then
    return answer('denied', 'half-open-full', first_expiry(LEASES))
  end
  take_lease(LEASES, slot, now, lease)
  return answer('ticket', 'trial', nil)
end
-- Closed. The hot path (no failures pending) is: count the call, take a lease (ZADD replaces
-- this slot's previous one: asking again proves that call is over). Permits exist only
-- while failures pend.
local held = LEASES
local kind = 'call'
if c.suspect then
  release(slot)
  expire_leases(now)
  local failures = failures_in_window(now, window)
  local calls = calls_in_window(now, window, false)
  if failures >= threshold and calls >= min_calls then
    transition = trip(c, trip_reason(failures, calls, window), now, recovery)
    save(c, now, cfg)
    return answer('denied', 'open', c.until_at)
  end
  -- policy.must_throttle: the calls in flight could trip the breaker by themselves.
  local busy, first_end = in_flight(c, now, grace)
  if failures + busy >= threshold and calls >= min_calls then
    return answer('denied', 'throttled', first_end or now)
  end
  held, kind = PERMITS, 'permit'
end
local bucket = bucket_of(now, window)
if redis.call('HINCRBY', CALLS, string.format('%d', bucket), 1) == 1 then
  -- first call of a bucket: the occasional housekeeping (old buckets, lapsed leases)
  calls_in_window(now, window, true)
  redis.call('PEXPIRE', CALLS, math.ceil((window + 2 * window / BUCKETS) * 1000))
  redis.call('ZREMRANGEBYSCORE', LEASES, '-inf', fmt(now))
end
take_lease(held, slot, now, lease)
return answer('ticket', kind, nil, bucket)
