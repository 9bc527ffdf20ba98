-- Commit one detection decision if the pattern state is still the version it was read at.
-- KEYS[1] pattern state (hash)   KEYS[2] this request's decision memo
-- ARGV[1] expected version   ARGV[2] decision JSON   ARGV[3] memo TTL (s)
-- ARGV[4..] field, value pairs of the new state
-- Returns {'ok', decision} | {'memo', earlier decision} | {'conflict', current version}
local memo = redis.call('GET', KEYS[2])
if memo then
  return {'memo', memo}
end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return {'conflict', tostring(version)}
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], 'version', version + 1, unpack(fields))
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
return {'ok', ARGV[2]}
