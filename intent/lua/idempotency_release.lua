-- Give a claim back, only if it is still ours (our lease may have lapsed and another run
-- claimed the event since). KEYS[1] the mark; ARGV[1] this run's token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
