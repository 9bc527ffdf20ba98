-- Give a claim back only if it is still ours: delete KEYS[1] if it holds ARGV[1] (a lease
-- that lapsed may have been claimed by another owner since). Used for event handlers'
-- claims and for request_id claims.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
