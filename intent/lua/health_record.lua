-- Store a health snapshot and each component's status, returning the components whose
-- status changed, so exactly one checker logs each change however many run at once.
-- KEYS[1] snapshot (string), KEYS[2] statuses (hash component -> status)
-- ARGV[1] snapshot JSON, ARGV[2] TTL in ms, ARGV[3..] component, status pairs
local changes = {}
for i = 3, #ARGV, 2 do
  local component, status = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[2], component)
  if old ~= status then
    redis.call('HSET', KEYS[2], component, status)
    table.insert(changes, component)
    table.insert(changes, old or '')
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return changes
