-- Take the steps of one lane that may run now, leasing each until its message is published.
-- KEYS[1] due   KEYS[2] entries   KEYS[3] leased   KEYS[4] deadlines
-- KEYS[5] pace (hash: tokens, at): the lane's token bucket, shared by every releaser
-- ARGV[1] mode: 'free' (no pacing), 'paced' (at `rate` per s, up to `burst` at once: the
--         lane's rate limit while its breaker is closed, its trial calls while half-open),
--         'held' (none: the breaker is open)
-- ARGV[2] most ids to take   ARGV[3] rate per s   ARGV[4] burst   ARGV[5] lease (s)
-- Steps due by their `deadlines` score (their analysis's deadline, or the end of their
-- deferral budget) are taken whatever the mode: they expire or give up without calling out.
-- Leases that lapsed (a releaser died or could not publish) go back to waiting first.
-- Returns {next due time or '', steps still waiting, id, entry, id, entry, ...}.
local DUE, ENTRIES, LEASED, DEADLINES, PACE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local mode, most = ARGV[1], tonumber(ARGV[2])
local rate, burst, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASED, '-inf', fmt(now), 'LIMIT', 0, most)) do
  redis.call('ZREM', LEASED, id)
  redis.call('ZADD', DUE, fmt(now), id)
end

local taken, out = {}, {}
local function take(id)
  if taken[id] or #out / 2 >= most then return end
  local entry = redis.call('HGET', ENTRIES, id)
  redis.call('ZREM', DUE, id)
  if entry then
    taken[id] = true
    redis.call('ZADD', LEASED, fmt(now + lease), id)
    out[#out + 1] = id
    out[#out + 1] = entry
  else
    redis.call('ZREM', DEADLINES, id)
  end
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', fmt(now), 'LIMIT', 0, most)) do
  if redis.call('ZSCORE', DUE, id) then take(id) end
end

local n = 0
if mode == 'free' then
  n = most
elseif mode == 'paced' then
  local p = redis.call('HMGET', PACE, 'tokens', 'at')
  local tokens, at = tonumber(p[1]) or burst, tonumber(p[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  local allowed = math.min(math.floor(tokens), most)
  local before = #out
  if allowed > 0 then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', DUE, '-inf', fmt(now), 'LIMIT', 0, allowed)) do
      take(id)
    end
  end
  redis.call('HSET', PACE, 'tokens', tostring(tokens - (#out - before) / 2), 'at', fmt(now))
  redis.call('EXPIRE', PACE, 3600) -- refilled from burst when it lapses
end
if n > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', DUE, '-inf', fmt(now), 'LIMIT', 0, n)) do
    take(id)
  end
end

local first = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
local result = {first[2] or '', redis.call('ZCARD', DUE)}
for _, value in ipairs(out) do result[#result + 1] = value end
return result
