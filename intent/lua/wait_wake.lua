-- Make due at ARGV[1] every step of one lane that waits for its breaker and is due later
-- (not one waiting for a retry's backoff or a rate limit): an operator reset or closed
-- the breaker, so they may run.
-- KEYS[1] due (zset id -> due time)   KEYS[2] entries (hash id -> entry JSON)
-- ARGV[1] when (epoch s)
-- Returns how many were woken.
local now = tonumber(ARGV[1])
local woken = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    if ok and type(entry) == 'table' and entry.breaker == true then
      redis.call('ZADD', KEYS[1], 'XX', now, id)
      woken = woken + 1
    end
  end
end
return woken
