-- Append events to the stream once each: an event id already marked as seen is skipped,
-- so a retried or redelivered emit step adds no duplicate.
-- KEYS[1] the stream (one partition)   KEYS[2..n+1] the "seen" marker of each event, in
-- order (the partition's, same hash tag)
-- ARGV[1] MAXLEN (approximate)   ARGV[2] marker TTL (s)   ARGV[3..n+2] each event's
-- stream fields as a JSON array [field, value, field, value, ...]
-- Returns the stream entry id of each event, or '' for one already published.
local added = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', tonumber(ARGV[2])) then
    local fields = cjson.decode(ARGV[i + 1])
    added[#added + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  else
    added[#added + 1] = ''
  end
end
return added
