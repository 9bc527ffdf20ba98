-- Shared by every breaker script: the store prepends it to each primitive when it loads them.
-- One breaker's keys share a hash tag, so each script touches a single Cluster slot:
-- KEYS[1] state (hash)   KEYS[2] failures (zset: time -> time:slot)
-- KEYS[3] calls (hash: window bucket -> calls)
-- KEYS[4] leases (zset: slot -> lease expiry) of calls admitted with no failures pending,
--         and of half-open trials
-- KEYS[5] permits (zset: slot -> lease expiry) of calls admitted while failures pend
-- KEYS[6] slow (hash: window bucket -> calls that finished slower than slow_call_duration)
-- Redis TIME is the clock: worker clocks may disagree, the server's is the one shared.
-- Replies are one JSON array of strings: one bulk string parses far faster in redis-py than a
-- multi-bulk of twenty, and numbers as strings keep their fractions (Redis would truncate).
local STATE, FAILURES, CALLS, LEASES, PERMITS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local SLOW = KEYS[6]
local BUCKETS = 20 -- policy.WINDOW_BUCKETS

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  if x == nil then return '' end
  return string.format('%.6f', x)
end

local function num(v)
  if v == false or v == nil or v == '' then return nil end
  return tonumber(v)
end

local function load()
  local h = redis.call('HMGET', STATE, 'state', 'gen', 'until', 'opened_at', 'forced',
    'reason', 'successes', 'suspect', 'suspect_since', 'answered', 'trips', 'bulkhead')
  local forced = h[5]
  if forced == false or forced == '' then forced = nil end
  return {
    exists = h[1] ~= false, state = h[1] or 'closed', gen = tonumber(h[2] or '0'),
    until_at = num(h[3]), opened_at = num(h[4]), forced = forced, reason = h[6] or '',
    successes = tonumber(h[7] or '0'), suspect = h[8] == '1',
    suspect_since = num(h[9]) or 0, answered = num(h[10]) or -1,
    trips = tonumber(h[11] or '0'), bulkhead = h[12] or '',
  }
end

-- A call's lease expires `lease` seconds after it started. `answered` (state field) is the
-- latest start of a call known to have ended: its slot asked again, or it reported a
-- success (policy.py: slow calls).
local function answer(c, expiry, lease)
  if not expiry then return end
  local started = tonumber(expiry) - lease
  if started > c.answered then
    c.answered = started
    redis.call('HSET', STATE, 'answered', fmt(started))
  end
end

-- Unexpired leases in `key` started after `answered`: how many are slower than `slow_after`
-- seconds, how many are not (yet), and when the first of the latter expires.
local function slow_and_young(key, c, now, lease, slow_after)
  local low = math.max(now, c.answered + lease)
  local cut = now - slow_after + lease
  local slow, young = 0, 0
  if cut > low then slow = redis.call('ZCOUNT', key, '(' .. fmt(low), '(' .. fmt(cut)) end
  local from = math.max(low, cut)
  local first = redis.call('ZRANGEBYSCORE', key, fmt(from), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[1] then young = redis.call('ZCOUNT', key, fmt(from), '+inf') end
  return slow, young, num(first[2])
end

-- cfg: {window, recovery, bulkhead} as the calling breaker knows them (kept for operators'
-- listings)
local function save(c, now, cfg)
  redis.call('HSET', STATE, 'state', c.state, 'gen', c.gen, 'until', fmt(c.until_at),
    'opened_at', fmt(c.opened_at), 'forced', c.forced or '', 'reason', c.reason,
    'successes', c.successes, 'suspect', c.suspect and '1' or '0', 'changed_at', fmt(now),
    'trips', c.trips)
  if cfg then
    redis.call('HSET', STATE, 'window', cfg.window, 'recovery', cfg.recovery)
    if cfg.bulkhead then
      c.bulkhead = cfg.bulkhead
      redis.call('HSET', STATE, 'bulkhead', cfg.bulkhead)
    end
  end
end

-- Every move starts a new generation and a clean window: outcomes of calls that began
-- before it no longer match, and old failures cannot re-trip a recovered breaker.
local function move(c, state, reason)
  local old = c.state
  c.state, c.gen, c.reason = state, c.gen + 1, reason
  c.successes, c.suspect = 0, false
  if state ~= 'open' then c.until_at = nil end
  -- a close is a successful recovery: the next trip opens for the recovery timeout again
  if state == 'closed' then c.opened_at, c.trips = nil, 0 end
  redis.call('DEL', FAILURES, CALLS, LEASES, PERMITS, SLOW)
  return {old, state, reason}
end

-- policy.break_duration: the trips-th consecutive trip's open time. `spread` in [0, 1) is
-- drawn once per trip, here (so `until` is one exact value for the fleet), from the key and
-- the time: Redis replicates scripts' effects, and scripts have no seeded random source.
local function break_duration(trips, brk, spread)
  if trips <= 1 or brk.factor == 1 then return brk.recovery end
  local cap = math.max(brk.max, brk.recovery)
  local grown = brk.recovery * brk.factor ^ (trips - 1)
  grown = grown * (1 + brk.jitter * (2 * spread - 1))
  return math.max(brk.recovery, math.min(cap, grown))
end

-- brk: {recovery, factor, max, jitter}; a trip by a rule (not an operator's open()) counts
-- toward the growing open time.
local function trip(c, reason, now, brk, counts)
  local transition = move(c, 'open', reason)
  local duration = brk.recovery
  if counts then
    c.trips = c.trips + 1
    local spread = tonumber(string.sub(redis.sha1hex(STATE .. fmt(now)), 1, 8), 16) / 4294967296
    duration = break_duration(c.trips, brk, spread)
  end
  c.opened_at, c.until_at = now, now + duration
  return transition
end

local function trip_reason(failures, calls, window)
  return string.format('%d failures in the last %g s (%d calls)', failures, window, calls)
end

local function bucket_of(now, window)
  return math.floor(now / (window / BUCKETS))
end

-- Calls counted in `key` (CALLS, SLOW, the retry budget's) in the last `span` buckets (all
-- BUCKETS unless given); prune drops the older buckets.
local function in_buckets(key, now, window, prune, span)
  local oldest = bucket_of(now, window) - (span or BUCKETS) + 1
  local flat = redis.call('HGETALL', key)
  local total = 0
  for i = 1, #flat, 2 do
    if tonumber(flat[i]) >= oldest then
      total = total + tonumber(flat[i + 1])
    elseif prune then
      redis.call('HDEL', key, flat[i])
    end
  end
  return total
end

local function calls_in_window(now, window, prune)
  return in_buckets(CALLS, now, window, prune)
end

-- A call of the current generation that finished slower than the slow-call duration,
-- counted in its own bucket (the one its call was counted in); returns the window's count.
local function count_slow(bucket, now, window)
  if redis.call('HINCRBY', SLOW, bucket, 1) == 1 then
    redis.call('PEXPIRE', SLOW, math.ceil((window + 2 * window / BUCKETS) * 1000))
  end
  return in_buckets(SLOW, now, window, true)
end

-- policy.trip_rule: the reason of the first rule that trips (count, failure rate, slow-call
-- rate), else nil. r: {threshold, min_calls, window, slow_after, failure_rate, slow_rate}
local function rate_reached(count, calls, percent)
  return percent > 0 and calls > 0 and count * 100 >= percent * calls
end

local function rate_reason(rule, count, calls, percent, window)
  return string.format('%s rate %s%% >= %s%% over %d calls in the last %g s', rule,
    string.format('%g', count * 100 / calls), string.format('%g', percent), calls, window)
end

-- policy.failures_in_buckets: the failures over the span the window's calls are counted in
-- (whole buckets), so that a rate compares like with like.
local function failures_in_buckets(now, window)
  local start = (bucket_of(now, window) - BUCKETS + 1) * (window / BUCKETS)
  return redis.call('ZCOUNT', FAILURES, fmt(start), '+inf')
end

local function trip_rule(failures, calls, r, slow, slow_done)
  if failures + slow >= r.threshold and calls >= r.min_calls then
    if slow > 0 then
      return string.format('%d failures and %d calls slower than %g s in the last %g s (%d calls)',
        failures, slow, r.slow_after, r.window, calls)
    end
    return trip_reason(failures, calls, r.window)
  end
  if calls < r.min_calls then return nil end
  if r.failure_rate > 0 then
    local counted = failures_in_buckets(r.now, r.window)
    if rate_reached(counted, calls, r.failure_rate) then
      return rate_reason('failure', counted, calls, r.failure_rate, r.window)
    end
  end
  if rate_reached(slow_done, calls, r.slow_rate) then
    return rate_reason('slow-call', slow_done, calls, r.slow_rate, r.window)
  end
  return nil
end

local function failures_in_window(now, window)
  return redis.call('ZCOUNT', FAILURES, '(' .. fmt(now - window), '+inf')
end

local function first_expiry(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return num(first[2])
end

local function take_lease(key, slot, now, lease)
  redis.call('ZADD', key, fmt(now + lease), slot)
  redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 1000)
end

-- A slot asking again, or reporting, is done with its previous call.
local function release(slot)
  redis.call('ZREM', LEASES, slot)
  redis.call('ZREM', PERMITS, slot)
end

local function expire_leases(now)
  redis.call('ZREMRANGEBYSCORE', LEASES, '-inf', fmt(now))
  redis.call('ZREMRANGEBYSCORE', PERMITS, '-inf', fmt(now))
end

-- Calls counting as in flight for the throttle, and when the first stops counting
-- (policy.clean_calls_count: calls admitted before failures began count for `grace`).
local function in_flight(c, now, grace)
  local count = redis.call('ZCARD', PERMITS)
  local first_end = first_expiry(PERMITS)
  local settled = c.suspect_since + grace
  if now < settled then
    local clean = redis.call('ZCARD', LEASES)
    if clean > 0 then
      count = count + clean
      local clean_end = math.min(first_expiry(LEASES), settled)
      if first_end == nil or clean_end < first_end then first_end = clean_end end
    end
  end
  return count, first_end
end

-- The reply every script starts with; counts are '' when the script did not compute them:
-- state, generation, now, until, opened_at, forced, reason, suspect, failures, calls,
-- in_flight, transition old state, new state, reason, trips (consecutive, no recovery
-- since), bulkhead (the limit the breaker's processes last stored, '' if none); then the
-- script's own fields.
local function reply(c, now, transition, counts, extra)
  local t = transition or {'', '', ''}
  local n = counts or {}
  local out = {c.state, tostring(c.gen), fmt(now), fmt(c.until_at), fmt(c.opened_at),
    c.forced or '', c.reason, c.suspect and '1' or '0',
    n[1] and tostring(n[1]) or '', n[2] and tostring(n[2]) or '', n[3] and tostring(n[3]) or '',
    t[1], t[2], t[3], tostring(c.trips), c.bulkhead}
  for _, value in ipairs(extra or {}) do out[#out + 1] = value end
  return cjson.encode(out)
end
