-- renew: extends every lease a server replica's sessions hold in a queue, in one call. A lease is
-- never extended past its job's timeout: such a job fails its attempt here ("timed out").
-- KEYS[1] the queue's leased set
-- ARGV prefix now ttl unused retention keep jitter (id session)...
-- Returns the ids that are no longer this session's (cancelled, reclaimed, timed out).
local prefix, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local retention, keep, jitter = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lost = {}
for i = 8, #ARGV, 2 do
  local id, session = ARGV[i], ARGV[i + 1]
  local jkey = prefix .. 'job:' .. id
  local j = redis.call('HMGET', jkey, 'state', 'session', 'timeout_at', 'timeout')
  if j[1] ~= 'RUNNING' or j[2] ~= session then
    table.insert(lost, id)
  elseif tonumber(j[3]) <= now then
    retry_or_fail(prefix, id, now, jitter, 'timed out after ' .. math.floor(tonumber(j[4]) / 1000) .. 's',
      retention, keep, false)
    table.insert(lost, id)
  else
    local deadline = math.min(now + ttl, tonumber(j[3]))
    redis.call('HSET', jkey, 'deadline', deadline)
    redis.call('ZADD', KEYS[1], deadline, id)
  end
end
return lost
