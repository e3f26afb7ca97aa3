-- release: a worker's stream broke and it did not come back within the grace period; its jobs
-- go back to the queue at once (the attempt counts) instead of waiting for the lease deadline.
-- KEYS[1] the queue's leased set
-- ARGV prefix now session reason retention keep id...
-- Returns how many jobs were released.
local prefix, now, session, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local retention, keep = tonumber(ARGV[5]), tonumber(ARGV[6])
local released = 0
for i = 7, #ARGV do
  local id = ARGV[i]
  local j = redis.call('HMGET', prefix .. 'job:' .. id, 'state', 'session')
  if j[1] == 'RUNNING' and j[2] == session then
    retry_or_fail(prefix, id, now, 0, reason, retention, keep, true)
    released = released + 1
  end
end
return released
