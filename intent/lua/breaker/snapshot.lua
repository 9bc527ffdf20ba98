-- Read one breaker with its window counts, for operators and current_state. Writes nothing.
-- ARGV[1] failure_window, or '' for the one the breaker's processes stored
-- Returns the common reply (counts filled in).
local now = clock()
local c = load()
local window = num(ARGV[1]) or num(redis.call('HGET', STATE, 'window')) or 120
local in_flight = redis.call('ZCOUNT', LEASES, '(' .. fmt(now), '+inf')
  + redis.call('ZCOUNT', PERMITS, '(' .. fmt(now), '+inf')
return reply(c, now, nil,
  {failures_in_window(now, window), calls_in_window(now, window, false), in_flight})
