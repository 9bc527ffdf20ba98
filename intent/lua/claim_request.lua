-- Claim a request_id for an analysis, in one step. KEYS[1] the claim; ARGV[1] the analysis
-- id, ARGV[2] its TTL (s). Returns false when claimed afresh; the owner when held; or
-- 'given-back:<old analysis id>' when it takes over a claim given back after a refusal
-- (the caller then forgets the old analysis's results, so the new run is not answered
-- with the old refusal).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then
  return false
end
local owner = redis.call('GET', KEYS[1])
if owner and string.sub(owner, 1, 11) == 'given-back:' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  return owner
end
return owner or false
