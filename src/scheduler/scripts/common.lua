-- Shared helpers, prepended to every transition script at load time (see scripts.rs).
-- Key layout (see keys.rs): every key of a queue starts with the prefix `cv:{<queue>}:`.
-- Job hash fields: id queue tenant tier priority state payload ctype labels attempt max_attempts
--   backoff_initial backoff_max timeout idem created run_at started finished deadline pct stage
--   msg result error worker session token seq rank

local TERMINAL = { SUCCEEDED = true, FAILED = true, CANCELLED = true }

-- Appends an event to the job's capped log and publishes it to every replica.
local function emit(prefix, id, ev, keep)
  local jkey = prefix .. 'job:' .. id
  ev.id = id
  ev.seq = redis.call('HINCRBY', jkey, 'seq', 1)
  local data = cjson.encode(ev)
  local evkey = prefix .. 'ev:' .. id
  redis.call('RPUSH', evkey, data)
  redis.call('LTRIM', evkey, -keep, -1)
  redis.call('PUBLISH', 'cv:events', data)
  return ev.seq
end

-- Score in a tier's ready set: priority first, then submission order.
local function ready_score(priority, rank)
  return tonumber(priority) * 1099511627776 + tonumber(rank)
end

local function enqueue(prefix, id, tier, priority, rank)
  redis.call('ZADD', prefix .. 'ready:' .. tier, ready_score(priority, rank), id)
end

-- A terminal job keeps its hash, log, id mapping and idempotency key for `retention_ms`; the
-- `expiring` set tells the sweep when to drop its id from the all-jobs index.
local function retire(prefix, id, now, retention_ms)
  local jkey = prefix .. 'job:' .. id
  redis.call('ZADD', prefix .. 'expiring', now + retention_ms, id)
  redis.call('PEXPIRE', jkey, retention_ms)
  redis.call('PEXPIRE', prefix .. 'ev:' .. id, retention_ms)
  redis.call('PEXPIRE', 'cv:id:' .. id, retention_ms)
  local idem = redis.call('HGET', jkey, 'idem')
  if idem and idem ~= '' then
    local tenant = redis.call('HGET', jkey, 'tenant')
    redis.call('PEXPIRE', prefix .. 'idem:' .. tenant .. ':' .. idem, retention_ms)
  end
end

-- Ends the running attempt with `err`: back to the queue after a backoff, or FAILED when no
-- attempts are left. `jitter` in [0,1) comes from the caller (Lua's PRNG is deterministic).
-- `immediate` requeues without backoff (the worker vanished; nothing suggests the job is bad).
local function retry_or_fail(prefix, id, now, jitter, err, retention_ms, keep, immediate)
  local jkey = prefix .. 'job:' .. id
  local j = redis.call('HMGET', jkey, 'attempt', 'max_attempts', 'backoff_initial', 'backoff_max',
    'tier', 'priority', 'rank')
  local attempt, max = tonumber(j[1]), tonumber(j[2])
  redis.call('ZREM', prefix .. 'leased', id)
  redis.call('HDEL', jkey, 'session', 'deadline')
  if attempt >= max then
    redis.call('HSET', jkey, 'state', 'FAILED', 'error', err, 'finished', now)
    emit(prefix, id, { kind = 'state', state = 'FAILED', attempt = attempt, error = err, t = now }, keep)
    retire(prefix, id, now, retention_ms)
    return 'FAILED'
  end
  if immediate then
    redis.call('HSET', jkey, 'state', 'QUEUED', 'error', err)
    enqueue(prefix, id, j[5], j[6], j[7])
    emit(prefix, id, { kind = 'state', state = 'QUEUED', attempt = attempt, error = err, t = now }, keep)
    redis.call('PUBLISH', 'cv:wake', redis.call('HGET', jkey, 'queue'))
    return 'QUEUED'
  end
  -- Exponential backoff with "equal jitter": half fixed, half random.
  local delay = math.min(tonumber(j[4]), tonumber(j[3]) * (2 ^ (attempt - 1)))
  delay = math.floor(delay / 2 + delay / 2 * jitter)
  local due = now + delay
  redis.call('HSET', jkey, 'state', 'SCHEDULED', 'error', err, 'run_at', due)
  redis.call('ZADD', prefix .. 'delayed', due, id)
  emit(prefix, id, { kind = 'state', state = 'SCHEDULED', attempt = attempt, error = err, run_at = due, t = now }, keep)
  redis.call('PUBLISH', 'cv:wake', redis.call('HGET', jkey, 'queue') .. '|' .. due)
  return 'SCHEDULED'
end

-- Checks that `worker` holds the running lease of the job under `token`; returns nil or a
-- rejection reply.
local function check_lease(jkey, token, worker)
  local j = redis.call('HMGET', jkey, 'state', 'token', 'worker')
  if not j[1] then
    return { 'FAILED_PRECONDITION', 'job does not exist (finished jobs expire after the retention period)' }
  end
  if tonumber(token) ~= tonumber(j[2]) then
    return { 'FAILED_PRECONDITION', 'stale fencing token ' .. token .. '; the current lease has token ' .. j[2] }
  end
  if j[3] ~= worker then
    return { 'FAILED_PRECONDITION', 'job was never assigned to this worker' }
  end
  if j[1] ~= 'RUNNING' then
    return { 'FAILED_PRECONDITION', 'job is ' .. j[1] .. ', not RUNNING' }
  end
  return nil
end
