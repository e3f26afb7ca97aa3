-- lease: reclaims expired leases, promotes due delayed jobs, then leases up to n ready jobs,
-- picking tiers by weighted fair share (stride scheduling) and, within a tier, by priority then
-- submission order. n = 0 only reclaims, promotes and drops expired ids from the all-jobs
-- index (the periodic sweep).
-- KEYS[1] the queue's leased set
-- ARGV prefix now n ttl session worker retention keep jitter w_free w_pro w_premium w_enterprise
-- Returns {next_due_ms or -1, more_ready 0|1, {HGETALL job}...}
local prefix, now, n, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local session, worker = ARGV[5], ARGV[6]
local retention, keep, jitter = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local weights = { tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]) }

-- 1. Leases whose deadline passed: the worker died without a goodbye, or the job ran past its
-- timeout (renewals stop at the timeout).
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)) do
  local t = redis.call('HMGET', prefix .. 'job:' .. id, 'timeout_at', 'timeout')
  local err = 'lease expired: the worker stopped renewing it'
  if t[1] and tonumber(t[1]) <= now then
    err = 'timed out after ' .. math.floor(tonumber(t[2]) / 1000) .. 's'
  end
  retry_or_fail(prefix, id, now, jitter, err, retention, keep, false)
end

-- 2. Delayed jobs that are due.
local delayed = prefix .. 'delayed'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)) do
  local jkey = prefix .. 'job:' .. id
  local j = redis.call('HMGET', jkey, 'tier', 'priority', 'rank', 'attempt')
  redis.call('ZREM', delayed, id)
  redis.call('HSET', jkey, 'state', 'QUEUED')
  enqueue(prefix, id, j[1], j[2], j[3])
  emit(prefix, id, { kind = 'state', state = 'QUEUED', attempt = tonumber(j[4]), t = now }, keep)
end

-- 2b. The sweep drops the ids of expired jobs from the all-jobs index (ListJobs).
if n == 0 then
  local gone = redis.call('ZRANGEBYSCORE', prefix .. 'expiring', '-inf', now, 'LIMIT', 0, 500)
  if #gone > 0 then
    redis.call('ZREM', prefix .. 'all', unpack(gone))
    redis.call('ZREM', prefix .. 'expiring', unpack(gone))
  end
end

-- 3. Stride scheduling: each tier has a pass that grows by 1/weight per lease; the non-empty
-- tier with the smallest pass goes next. A tier that was idle starts at the current virtual
-- time, so it cannot bank credit while empty and then flood the workers.
local stride_key = prefix .. 'stride'
local s = redis.call('HMGET', stride_key, 'p1', 'p2', 'p3', 'p4', 'vt')
local pass, vt = {}, tonumber(s[5]) or 0
local sizes = {}
for t = 1, 4 do
  pass[t] = tonumber(s[t]) or 0
  sizes[t] = redis.call('ZCARD', prefix .. 'ready:' .. t)
end

local out = {}
for _ = 1, n do
  local best, best_pass = nil, nil
  for t = 4, 1, -1 do
    if sizes[t] > 0 then
      local p = math.max(pass[t], vt)
      if best == nil or p < best_pass then best, best_pass = t, p end
    end
  end
  if best == nil then break end
  local id = redis.call('ZPOPMIN', prefix .. 'ready:' .. best)[1]
  sizes[best] = sizes[best] - 1
  vt = best_pass
  pass[best] = best_pass + 1 / weights[best]

  local jkey = prefix .. 'job:' .. id
  local attempt = redis.call('HINCRBY', jkey, 'attempt', 1)
  local token = redis.call('HINCRBY', jkey, 'token', 1)
  local timeout_at = now + tonumber(redis.call('HGET', jkey, 'timeout'))
  local deadline = math.min(now + ttl, timeout_at)
  redis.call('HSET', jkey, 'state', 'RUNNING', 'started', now, 'worker', worker, 'session', session,
    'deadline', deadline, 'timeout_at', timeout_at, 'pct', 0, 'stage', '', 'msg', '')
  redis.call('ZADD', KEYS[1], deadline, id)
  emit(prefix, id, { kind = 'state', state = 'RUNNING', attempt = attempt, worker = worker, t = now }, keep)
  table.insert(out, redis.call('HGETALL', jkey))
end
if #out > 0 then
  redis.call('HSET', stride_key, 'p1', pass[1], 'p2', pass[2], 'p3', pass[3], 'p4', pass[4], 'vt', vt)
end

local next_due = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')[2] or -1
local more = 0
for t = 1, 4 do if sizes[t] > 0 then more = 1 end end
return { tonumber(next_due), more, unpack(out) }
