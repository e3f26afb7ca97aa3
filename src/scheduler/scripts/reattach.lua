-- reattach: a reconnected worker still runs these jobs; those whose lease (token) is still
-- current move to its new session and get a fresh deadline.
-- KEYS[1] the queue's leased set
-- ARGV prefix now ttl session worker (id token)...
-- Returns {{reattached id...}, {lost id...}}
local prefix, now, ttl, session, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local kept, lost = {}, {}
for i = 6, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local jkey = prefix .. 'job:' .. id
  local j = redis.call('HMGET', jkey, 'state', 'token', 'timeout_at')
  if j[1] == 'RUNNING' and tonumber(j[2]) == tonumber(token) and tonumber(j[3]) > now then
    local deadline = math.min(now + ttl, tonumber(j[3]))
    redis.call('HSET', jkey, 'session', session, 'worker', worker)
    redis.call('ZADD', KEYS[1], deadline, id)
    table.insert(kept, id)
  else
    table.insert(lost, id)
  end
end
return { kept, lost }
