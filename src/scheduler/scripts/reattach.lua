-- reattach: a reconnected worker still runs these jobs; those whose lease (token) is still
-- current move to its new session and get a fresh deadline. A job restore.lua brought back
-- RUNNING is taken over by the first to reattach it (see common.lua `adopted`).
-- KEYS[1] the queue's leased set
-- ARGV prefix now ttl session worker (id token)...
-- Returns {{reattached id...}, {lost id...}}
local prefix, now, ttl, session, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local kept, lost = {}, {}
for i = 6, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local jkey = prefix .. 'job:' .. id
  local j = load(jkey, { 'state', 'token', 'timeout_at', 'adopt', 'atok', 'worker' })
  if j and adopted(j) and j.state == 'RUNNING' and not j.atok then
    j.atok, j.worker = token, worker -- see common.lua `adopted`
    redis.call('HSET', jkey, 'atok', token)
  end
  local mine = j and (tonumber(j.token) == tonumber(token) or (holds(j, token) and j.worker == worker))
  if mine and j.state == 'RUNNING' and tonumber(j.timeout_at) > now then
    local deadline = math.min(now + ttl, tonumber(j.timeout_at))
    redis.call('HSET', jkey, 'session', session, 'worker', worker)
    redis.call('ZADD', KEYS[1], deadline, id)
    table.insert(kept, id)
  else
    table.insert(lost, id)
  end
end
return { kept, lost }
