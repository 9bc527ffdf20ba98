-- Admit one guarded call or refuse it, in one step: forced states, open until the break
-- duration (then the move to half-open), trial leases, the throttle while failures or slow
-- calls pend, and the bulkhead.
-- ARGV[1] slot   ARGV[2] 'generation:bucket' of this slot's previous call if it finished
-- slower than slow_call_duration with its outcome unreported (a success), else ''
-- ARGV[3] failure_threshold   ARGV[4] min_throughput   ARGV[5] failure_window
-- ARGV[6] recovery_timeout   ARGV[7] half_open_timeout (lease length)   ARGV[8] half_open_max_calls
-- ARGV[9] throttle_wait   ARGV[10] slow_call_duration   ARGV[11] failure_rate_threshold
-- ARGV[12] slow_call_rate_threshold   ARGV[13] break_factor   ARGV[14] break_max
-- ARGV[15] break_jitter   ARGV[16] max_concurrent_calls   ARGV[17] '1' for a probe (optional)
-- Returns the common reply, then: 'ticket' | 'denied', the ticket kind or the denial,
-- until (when denied), the window bucket the call was counted in, '1' if the state was new.
local slot, slow_prev = ARGV[1], ARGV[2]
local threshold, min_calls, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local recovery, lease, max_trials = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local grace, slow_after = tonumber(ARGV[9]), tonumber(ARGV[10])
local rules = {threshold = threshold, min_calls = min_calls, window = window,
  slow_after = slow_after, failure_rate = tonumber(ARGV[11]), slow_rate = tonumber(ARGV[12])}
local brk = {recovery = recovery, factor = tonumber(ARGV[13]), max = tonumber(ARGV[14]),
  jitter = tonumber(ARGV[15])}
local limit = tonumber(ARGV[16])
local probe = ARGV[17] == '1'
local cfg = {window = ARGV[5], recovery = ARGV[6], bulkhead = ARGV[16]}
local now = clock()
rules.now = now
local c = load()
local fresh = not c.exists
if fresh or c.bulkhead ~= cfg.bulkhead then save(c, now, cfg) end
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
    transition = trip(c, string.format('trial call slower than %g s', slow_after), now, brk, true)
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
-- this slot's previous call finished slow: counted in its bucket, it may trip the rate rule
local slow_done = nil
if slow_prev ~= '' then
  local gen, prev_bucket = string.match(slow_prev, '^(%d+):(-?%d+)$')
  if tonumber(gen) == c.gen then slow_done = count_slow(prev_bucket, now, window) end
end
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
  local reason = trip_rule(failures, calls, rules, slow,
    slow_done or in_buckets(SLOW, now, window, false))
  if reason then
    transition = trip(c, reason, now, brk, true)
    save(c, now, cfg)
    return answer_with('denied', 'open', c.until_at)
  end
  -- policy.must_throttle: the calls in flight could trip the breaker by themselves.
  if failures + slow + busy >= threshold and calls >= min_calls then
    return answer_with('denied', 'throttled', first_end or now)
  end
  held, kind = PERMITS, 'permit'
elseif slow_done then
  local reason = trip_rule(failures_in_window(now, window), calls_in_window(now, window, false),
    rules, 0, slow_done)
  if reason then
    transition = trip(c, reason, now, brk, true)
    save(c, now, cfg)
    return answer_with('denied', 'open', c.until_at)
  end
end
if limit > 0 then
  -- policy.bulkhead_full: unexpired leases are the fleet's calls in flight (a dead holder's
  -- lapses); this slot's previous call is over, so its lease is not one of them
  release(slot)
  local busy = redis.call('ZCOUNT', LEASES, '(' .. fmt(now), '+inf')
    + redis.call('ZCOUNT', PERMITS, '(' .. fmt(now), '+inf')
  if busy >= limit then return answer_with('denied', 'bulkhead-full', now) end
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
