-- Admit one guarded call or refuse it, in one step: forced states, open until the recovery
-- timeout (then the move to half-open), trial leases, and the throttle while failures or
-- slow calls pend.
-- ARGV[1] slot   ARGV[2] failure_threshold   ARGV[3] min_throughput   ARGV[4] failure_window
-- ARGV[5] recovery_timeout   ARGV[6] half_open_timeout (lease length)   ARGV[7] half_open_max_calls
-- ARGV[8] throttle_wait   ARGV[9] slow_call_duration   ARGV[10] '1' for a probe (optional)
-- Returns the common reply, then: 'ticket' | 'denied', the ticket kind or the denial,
-- until (when denied), the window bucket the call was counted in, '1' if the state was new.
local slot = ARGV[1]
local threshold, min_calls, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local recovery, lease, max_trials = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local grace, slow_after = tonumber(ARGV[8]), tonumber(ARGV[9])
local probe = ARGV[10] == '1'
local cfg = {window = ARGV[4], recovery = ARGV[5]}
local now = clock()
local c = load()
local fresh = not c.exists
if fresh then save(c, now, cfg) end
local transition = nil

local function answer_with(verdict, what, until_at, bucket)
  return reply(c, now, transition, nil,
    {verdict, what, fmt(until_at), string.format('%d', bucket or 0), fresh and '1' or '0'})
end

if c.forced == 'open' then return answer_with('denied', 'forced-open', nil) end
if c.forced == 'closed' then return answer_with('ticket', 'bypass', nil) end
if c.state == 'open' then
  if c.until_at and now < c.until_at then return answer_with('denied', 'open', c.until_at) end
  transition = move(c, 'half-open', 'recovery timeout elapsed')
  save(c, now, cfg)
end
if c.state == 'half-open' then
  release(slot)
  expire_leases(now)
  -- a trial in flight past the slow-call duration: the service still does not answer
  local slow_trials = 0
  if lease > slow_after then
    slow_trials = redis.call('ZCOUNT', LEASES, '(' .. fmt(now), '(' .. fmt(now - slow_after + lease))
  end
  if slow_trials > 0 then
    transition = trip(c, string.format('trial call slower than %g s', slow_after), now, recovery)
    save(c, now, cfg)
    return answer_with('denied', 'open', c.until_at)
  end
  -- a probe (GET /health) would close the breaker on an answer that says nothing of the API
  if probe then return answer_with('denied', 'probe-waits', now) end
  if redis.call('ZCARD', LEASES) >= max_trials then
    return answer_with('denied', 'half-open-full', first_expiry(LEASES))
  end
  take_lease(LEASES, slot, now, lease)
  return answer_with('ticket', 'trial', nil)
end
-- Closed. The hot path (nothing pending) is: note that this slot's previous call is over,
-- look for slow unanswered calls, count the call, take a lease (ZADD replaces this slot's
-- previous one). Permits exist only while failures or slow calls pend.
answer(c, redis.call('ZSCORE', LEASES, slot), lease)
local slow, young, young_end = 0, 0, nil
if lease > slow_after then
  slow, young, young_end = slow_and_young(LEASES, c, now, lease, slow_after)
end
local held = LEASES
local kind = 'call'
if slow > 0 and not c.suspect then
  c.suspect, c.suspect_since = true, now
  redis.call('HSET', STATE, 'suspect', '1', 'suspect_since', fmt(now))
end
if c.suspect then
  release(slot)
  expire_leases(now)
  local failures = failures_in_window(now, window)
  local calls = calls_in_window(now, window, false)
  local busy, first_end
  if slow > 0 then
    -- the service stopped answering: every unanswered call counts, pending or in flight
    local slow_permits, _, _ = slow_and_young(PERMITS, c, now, lease, slow_after)
    local live_permits = redis.call('ZCARD', PERMITS)
    slow = slow + slow_permits
    busy = young + live_permits - slow_permits
    first_end = young_end
    local permit_end = first_expiry(PERMITS)
    if permit_end and (first_end == nil or permit_end < first_end) then first_end = permit_end end
  else
    busy, first_end = in_flight(c, now, grace)
  end
  if failures + slow >= threshold and calls >= min_calls then
    local reason = trip_reason(failures, calls, window)
    if slow > 0 then
      reason = string.format('%d failures and %d calls slower than %g s in the last %g s (%d calls)',
        failures, slow, slow_after, window, calls)
    end
    transition = trip(c, reason, now, recovery)
    save(c, now, cfg)
    return answer_with('denied', 'open', c.until_at)
  end
  -- policy.must_throttle: the calls in flight could trip the breaker by themselves.
  if failures + slow + busy >= threshold and calls >= min_calls then
    return answer_with('denied', 'throttled', first_end or now)
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
return answer_with('ticket', kind, nil, bucket)
