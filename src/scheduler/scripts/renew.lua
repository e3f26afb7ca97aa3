-- renew: extends every lease a server replica's sessions hold in a queue, in one call. A lease is
-- never extended past its job's timeout: such a job fails its attempt here ("timed out").
-- KEYS[1] the queue's leased set
-- ARGV prefix now ttl retention jitter, then (id session) per lease
-- Returns {ids no longer this session's (cancelled, reclaimed, timed out), ENDED (common.lua)}.
-- A job restore.lua brought back RUNNING goes to the first session that renews it.
local prefix, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local retention, jitter = tonumber(ARGV[4]), tonumber(ARGV[5])
local lost, deadlines = {}, {}
-- Redis lost its data and the queue is not restored yet: nothing can be told, and nothing is
-- lost yet; the restore brings the running jobs back for their holders to take over.
if redis.call('EXISTS', prefix .. 'ok') == 0 then return { lost, ENDED } end
for i = 6, #ARGV, 2 do
  local id, session = ARGV[i], ARGV[i + 1]
  local jkey = prefix .. 'job:' .. id
  local j = load(jkey)
  if j and adopted(j) and j.state == 'RUNNING' and not j.session then
    redis.call('HSET', jkey, 'session', session) -- see common.lua `adopted`
    j.session = session
  end
  if not j or j.state ~= 'RUNNING' or j.session ~= session then
    table.insert(lost, id)
  elseif tonumber(j.timeout_at) <= now then
    retry_or_fail(prefix, id, j, now, jitter, 'timed out after ' .. math.floor(tonumber(j.timeout) / 1000) .. 's',
      retention, false)
    table.insert(lost, id)
  else
    local deadline = math.min(now + ttl, tonumber(j.timeout_at))
    deadlines[#deadlines + 1] = deadline
    deadlines[#deadlines + 1] = id
  end
end
if #deadlines > 0 then redis.call('ZADD', KEYS[1], unpack(deadlines)) end
finish(prefix, now, retention)
return { lost, ENDED }
