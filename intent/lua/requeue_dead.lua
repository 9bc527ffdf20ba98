-- Put dead letters back on the events stream, each as a new entry without its dead_*
-- fields, and delete them, in one step: two operators requeueing at once add none twice.
-- KEYS[1] the dead-letter stream   KEYS[2] the events stream (same hash tag)
-- ARGV[1] MAXLEN of the events stream   ARGV[2] the first dead id ('-': the oldest)
-- ARGV[3] the last dead id ('+')   ARGV[4] how many at most
-- Returns the new entries' ids.
local rows = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[3], 'COUNT', tonumber(ARGV[4]))
local added = {}
for _, row in ipairs(rows) do
  local fields = {}
  local flat = row[2]
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 5) ~= 'dead_' then
      fields[#fields + 1] = flat[i]
      fields[#fields + 1] = flat[i + 1]
    end
  end
  if #fields == 0 then fields = {'dead_empty', '1'} end  -- XADD needs a field
  added[#added + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  redis.call('XDEL', KEYS[1], row[1])
end
return added
