-- Record the outcome of an admitted call, unless it began under an older generation:
-- a failure may trip the breaker, a trial success may close it, a trial failure reopens it.
-- ARGV[1] slot   ARGV[2] the ticket's generation
-- ARGV[3] success | failure | excluded | ignored | released
-- ARGV[4] the ticket's bucket   ARGV[5] failure_threshold   ARGV[6] min_throughput
-- ARGV[7] failure_window   ARGV[8] recovery_timeout   ARGV[9] success_threshold
-- ARGV[10] half_open_timeout (lease length)
-- Returns the common reply, then '1' if the outcome was applied, '0' if stale.
local slot, outcome, bucket = ARGV[1], ARGV[3], ARGV[4]
local threshold, min_calls, window = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local recovery, needed, lease = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local cfg = {window = ARGV[7], recovery = ARGV[8]}
local now = clock()
local c = load()
if outcome == 'released' then
  -- an idle caller's answered call, whatever moved since: as its next acquire would, the
  -- lease ends and the service is known to have answered then
  answer(c, redis.call('ZSCORE', PERMITS, slot) or redis.call('ZSCORE', LEASES, slot), lease)
  release(slot)
  return reply(c, now, nil, nil, {'1'})
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
    if failures >= threshold and calls >= min_calls then
      transition = trip(c, trip_reason(failures, calls, window), now, recovery)
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
    transition = trip(c, 'trial call failed', now, recovery)
    save(c, now, cfg)
  end
end
return reply(c, now, transition, nil, {'1'})
