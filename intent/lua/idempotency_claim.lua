-- Claim an event for one run of a handler that must act once per event.
-- KEYS[1] the mark; ARGV[1] this run's token, ARGV[2] the lease (ms).
-- Returns {1, 0}: claimed, run it; {0, 0}: already done; {2, ms}: claimed by another run
-- whose lease ends in ms.
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0}
end
if current == 'done' then
  return {0, 0}
end
return {2, redis.call('PTTL', KEYS[1])}
