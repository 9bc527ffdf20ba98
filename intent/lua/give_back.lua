-- Give a request_id claim back after its analysis was refused: only the claim of that
-- analysis (KEYS[1] holds ARGV[1]), which becomes 'given-back:<id>' for as long as it had
-- left, so the next claim takes it over. Returns 1 if given back.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'given-back:' .. ARGV[1], 'KEEPTTL')
  return 1
end
return 0
