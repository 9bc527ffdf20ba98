-- Park a step that waits (a retry's backoff, an open breaker, a full limit) until `due`.
-- One lane's keys share a hash tag (one Cluster slot):
-- KEYS[1] due (zset id -> due time)   KEYS[2] entries (hash id -> entry JSON)
-- KEYS[3] leased (zset id -> lease end)
-- KEYS[4] deadlines (zset id -> the latest it may wait, whatever its breaker says)
-- ARGV[1] id   ARGV[2] due (epoch s)   ARGV[3] release by ('' for none)   ARGV[4] entry
-- The same id parked again replaces its entry: a redelivered step never waits twice, and
-- a step released and parked again before its release was confirmed stays parked.
local id = ARGV[1]
redis.call('HSET', KEYS[2], id, ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], id)
redis.call('ZREM', KEYS[3], id)
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[3], id)
else
  redis.call('ZREM', KEYS[4], id)
end
return redis.call('ZCARD', KEYS[1])
