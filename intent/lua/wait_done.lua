-- Forget steps whose messages were published, unless they were parked again meanwhile.
-- KEYS[1] entries   KEYS[2] leased   KEYS[3] deadlines   ARGV: the ids
local forgotten = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
    forgotten = forgotten + 1
  end
end
return forgotten
