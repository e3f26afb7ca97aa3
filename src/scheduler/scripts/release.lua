-- release: a worker's stream broke and it did not come back within the grace period; its jobs
-- go back to the queue at once (the attempt counts) instead of waiting for the lease deadline.
-- KEYS[1] the queue's leased set
-- ARGV prefix now session reason retention id...
-- Returns ENDED (see common.lua): the released jobs and their new states.
local prefix, now, session, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local retention = tonumber(ARGV[5])
for i = 6, #ARGV do
  local id = ARGV[i]
  local j = load(prefix .. 'job:' .. id)
  if j and j.state == 'RUNNING' and j.session == session then
    retry_or_fail(prefix, id, j, now, 0, reason, retention, true)
  end
end
finish(prefix, now, retention)
return ENDED
