-- Record the outcome of an admitted call, unless it began under an older generation:
-- a failure may trip the breaker, a trial success may close it, a trial failure reopens it.
-- ARGV[1] slot   ARGV[2] the ticket's generation
-- ARGV[3] success | failure | excluded | ignored | released
-- ARGV[4] the ticket's bucket   ARGV[5] '1' if the call took longer than slow_call_duration
-- ARGV[6] failure_threshold   ARGV[7] min_throughput   ARGV[8] failure_window
-- ARGV[9] recovery_timeout   ARGV[10] success_threshold   ARGV[11] half_open_timeout (lease)
-- ARGV[12] slow_call_duration   ARGV[13] failure_rate_threshold   ARGV[14] slow_call_rate_threshold
-- ARGV[15] break_factor   ARGV[16] break_max   ARGV[17] break_jitter
-- Returns the common reply, then '1' if the outcome was applied, '0' if stale.
local slot, outcome, bucket, was_slow = ARGV[1], ARGV[3], ARGV[4], ARGV[5] == '1'
local threshold, min_calls, window = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local recovery, needed, lease = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local rules = {threshold = threshold, min_calls = min_calls, window = window,
  slow_after = tonumber(ARGV[12]), failure_rate = tonumber(ARGV[13]),
  slow_rate = tonumber(ARGV[14])}
local brk = {recovery = recovery, factor = tonumber(ARGV[15]), max = tonumber(ARGV[16]),
  jitter = tonumber(ARGV[17])}
local cfg = {window = ARGV[8], recovery = ARGV[9]}
local now = clock()
rules.now = now
local c = load()

-- A closed breaker's call of this generation finished slow: counted in its bucket, it may
-- trip the slow-call rate (the transition, or nil).
local function slow_finished()
  local slow_done = count_slow(bucket, now, window)
  local reason = trip_rule(failures_in_window(now, window), calls_in_window(now, window, false),
    rules, 0, slow_done)
  if not reason then return nil end
  local transition = trip(c, reason, now, brk, true)
  save(c, now, cfg)
  return transition
end

if outcome == 'released' then
  -- an idle caller's answered call, whatever moved since: as its next acquire would, the
  -- lease ends and the service is known to have answered then
  answer(c, redis.call('ZSCORE', PERMITS, slot) or redis.call('ZSCORE', LEASES, slot), lease)
  release(slot)
  local transition = nil
  if was_slow and tonumber(ARGV[2]) == c.gen and c.state == 'closed' and not c.forced then
    transition = slow_finished()
  end
  return reply(c, now, transition, nil, {'1'})
end
if tonumber(ARGV[2]) ~= c.gen or c.forced then return reply(c, now, nil, nil, {'0'}) end
local function uncount()
  -- the call no longer counts toward the throughput
  if redis.call('HEXISTS', CALLS, bucket) == 1 then
    if redis.call('HINCRBY', CALLS, bucket, -1) <= 0 then redis.call('HDEL', CALLS, bucket) end
  end
end
if outcome == 'ignored' then
  -- a probe's answer: its lease ends, and nothing else (not even "the service answered")
  release(slot)
  if c.state == 'closed' then uncount() end
  return reply(c, now, nil, nil, {'1'})
end
if outcome ~= 'failure' then
  -- the service answered this call (policy.py: slow calls)
  answer(c, redis.call('ZSCORE', PERMITS, slot) or redis.call('ZSCORE', LEASES, slot), lease)
end
release(slot)
local transition = nil
if c.state == 'closed' then
  if outcome == 'excluded' then
    uncount()  -- neither failure nor success
  elseif outcome == 'success' then
    if was_slow then
      transition = slow_finished()
      if transition then return reply(c, now, transition, nil, {'1'}) end
    end
    if c.suspect then
      -- the service answers again; permits still out report as plain calls from now on
      c.suspect = false
      redis.call('HSET', STATE, 'suspect', '0')
      redis.call('DEL', PERMITS)
    end
  else
    redis.call('ZADD', FAILURES, fmt(now), fmt(now) .. ':' .. slot)
    redis.call('ZREMRANGEBYSCORE', FAILURES, '-inf', fmt(now - window))
    redis.call('PEXPIRE', FAILURES, math.ceil(window * 1000))
    if not c.suspect then
      c.suspect, c.suspect_since = true, now
      redis.call('HSET', STATE, 'suspect', '1', 'suspect_since', fmt(now))
    end
    local failures = redis.call('ZCARD', FAILURES)
    local calls = calls_in_window(now, window, false)
    local slow_done
    if was_slow then
      slow_done = count_slow(bucket, now, window)
    else
      slow_done = in_buckets(SLOW, now, window, false)
    end
    local reason = trip_rule(failures, calls, rules, 0, slow_done)
    if reason then
      transition = trip(c, reason, now, brk, true)
      save(c, now, cfg)
    end
  end
elseif c.state == 'half-open' then
  if outcome == 'success' then
    c.successes = c.successes + 1
    if c.successes >= needed then
      local reason = string.format('%d trial call%s succeeded', c.successes,
        c.successes == 1 and '' or 's')
      transition = move(c, 'closed', reason)
      save(c, now, cfg)
    else
      redis.call('HSET', STATE, 'successes', c.successes)
    end
  elseif outcome == 'failure' then
    transition = trip(c, 'trial call failed', now, brk, true)
    save(c, now, cfg)
  end
end
return reply(c, now, transition, nil, {'1'})
