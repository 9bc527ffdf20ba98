-- A manual move: pybreaker's open() / half_open() / close(), operators' force-open,
-- force-closed and reset. Every move starts a new generation.
-- ARGV[1] action   ARGV[2] reason   ARGV[3] failure_window ('' if unknown)
-- ARGV[4] recovery_timeout ('' for the one the breaker's processes stored)
-- Returns the common reply; the transition fields are set if the state or the force changed.
local action, reason = ARGV[1], ARGV[2]
local now = clock()
local c = load()
local recovery = num(ARGV[4]) or num(redis.call('HGET', STATE, 'recovery')) or 60
local cfg = nil
if ARGV[3] ~= '' then cfg = {window = ARGV[3], recovery = ARGV[4]} end
local old_state, old_forced = c.state, c.forced
c.forced = nil
if action == 'open' or action == 'force-open' then
  trip(c, reason, now, {recovery = recovery}, false)  -- an operator's open: no growth
  if action == 'force-open' then c.forced, c.until_at = 'open', nil end
elseif action == 'half-open' then
  move(c, 'half-open', reason)
else
  move(c, 'closed', reason)
  if action == 'force-closed' then c.forced = 'closed' end
end
save(c, now, cfg)
local transition = nil
if old_state ~= c.state or old_forced ~= c.forced then
  transition = {old_state, c.state, reason}
end
return reply(c, now, transition)
