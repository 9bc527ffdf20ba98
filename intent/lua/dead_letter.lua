-- Move one pending entry to the dead letters: add its dead letter and acknowledge it, in
-- one step (never both dead-lettered and still pending, nor acked without its letter).
-- KEYS[1] the events stream (one partition)   KEYS[2] its dead-letter stream (same hash tag)
-- ARGV[1] group   ARGV[2] entry id   ARGV[3] MAXLEN (approximate)   ARGV[4..] field, value...
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local dead_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return dead_id
