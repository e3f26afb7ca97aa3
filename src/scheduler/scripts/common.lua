-- Shared helpers, prepended to every transition script at load time (see scripts.rs).
-- Key layout (see keys.rs): every key of a queue starts with the prefix `cv:{<queue>}:`.
-- Job hash fields: id queue tenant tier priority state payload ctype labels attempt max_attempts
--   backoff_initial backoff_max timeout idem created run_at started finished timeout_at
--   pct stage msg result error worker session token seq rank w
-- (A running job's lease deadline is its score in the leased set, not a field.)
-- `seq` grows by one per event of the job; `w` counts the open watches of the job, and its
-- events are published only while it is above zero (nobody pays for events nobody reads).
--
-- Hot paths keep Redis's work per job small: they read only the fields they need (a job hash is
-- a listpack, searched field by field), and they pass times as the strings the caller sent
-- rather than as Lua numbers, which Redis would format with printf for every argument.
--
-- A script collects what many jobs share (leased-set removals, expiry entries, events, wake-ups)
-- in the tables below and writes each in one command at the end (`finish`), so a batch of jobs
-- costs a few commands per job plus a few per call.

local TERMINAL = { SUCCEEDED = true, FAILED = true, CANCELLED = true }

local EVENTS = {}     -- events for watchers: one PUBLISH of a JSON array
local UNLEASED = {}   -- ids leaving the leased set: one ZREM
local RETIRED = {}    -- ids of finished jobs: one ZADD to the expiring index
local WAKE = { ready = false, due = nil } -- one PUBLISH on cv:wake per kind
-- Attempts that `retry_or_fail` ended, for the caller's history: id, new state, error, run_at
-- ('' unless SCHEDULED), four flat entries per job.
local ENDED = {}

-- The job fields the transitions read (`FIELDS`), and the fewer that a lease check and `settle`
-- need (`SETTLE_FIELDS`).
local FIELDS = { 'state', 'token', 'worker', 'attempt', 'seq', 'w', 'idem', 'tenant', 'result',
  'session', 'max_attempts', 'backoff_initial', 'backoff_max', 'tier', 'priority', 'rank',
  'timeout', 'timeout_at', 'error' }
local SETTLE_FIELDS = { 'state', 'token', 'worker', 'attempt', 'seq', 'w', 'idem', 'tenant', 'result' }

-- The job's `fields` (default: all) by name, or nil when the job does not exist. The first field
-- must be `state`, which every job has.
local function load(jkey, fields)
  fields = fields or FIELDS
  local v = redis.call('HMGET', jkey, unpack(fields))
  if not v[1] then return nil end
  local j = {}
  for i, f in ipairs(fields) do j[f] = v[i] end
  return j
end

-- Records an event for the job's watchers, if it has any. `seq` is the job's new sequence
-- number, which the caller writes with its own HSET.
local function emit(id, seq, j, ev)
  if j.w and j.w ~= '0' then
    ev.id = id
    ev.seq = seq
    EVENTS[#EVENTS + 1] = ev
  end
end

-- Score in a tier's ready set: priority first, then submission order.
local function ready_score(priority, rank)
  return tonumber(priority) * 1099511627776 + tonumber(rank)
end

local function enqueue(prefix, id, tier, priority, rank)
  redis.call('ZADD', prefix .. 'ready:' .. tier, ready_score(priority, rank), id)
  WAKE.ready = true
end

local function wake_at(due)
  if WAKE.due == nil or due < WAKE.due then WAKE.due = due end
end

-- Ends a job in a terminal state: one HSET, the expiry of its keys after `retention_ms`, and
-- its event. `fields` are extra hash fields to set, `ev` the event's extra fields. `now` and
-- `retention_ms` are the caller's ARGV strings. `j` needs the SETTLE_FIELDS.
local function settle(prefix, id, j, state, now, retention_ms, fields, ev)
  local jkey = prefix .. 'job:' .. id
  local seq = tonumber(j.seq) + 1
  redis.call('HSET', jkey, 'state', state, 'finished', now, 'seq', seq, unpack(fields))
  if j.state == 'RUNNING' then UNLEASED[#UNLEASED + 1] = id end
  redis.call('PEXPIRE', jkey, retention_ms)
  if j.idem and j.idem ~= '' then
    redis.call('PEXPIRE', prefix .. 'idem:' .. j.tenant .. ':' .. j.idem, retention_ms)
  end
  RETIRED[#RETIRED + 1] = id
  ev.kind = 'state'
  ev.state = state
  ev.attempt = tonumber(j.attempt)
  ev.t = tonumber(now)
  emit(id, seq, j, ev)
end

-- Ends the running attempt with `err`: back to the queue after a backoff, or FAILED when no
-- attempts are left. `jitter` in [0,1) comes from the caller (Lua's PRNG is deterministic).
-- `immediate` requeues without backoff (the worker vanished; nothing suggests the job is bad).
-- Returns the new state, and the time it is due when SCHEDULED.
local function retry_or_fail(prefix, id, j, now, jitter, err, retention_ms, immediate)
  local attempt, max = tonumber(j.attempt), tonumber(j.max_attempts)
  if attempt >= max then
    settle(prefix, id, j, 'FAILED', now, retention_ms, { 'error', err }, { error = err })
    for _, v in ipairs({ id, 'FAILED', err, '' }) do ENDED[#ENDED + 1] = v end
    return 'FAILED'
  end
  UNLEASED[#UNLEASED + 1] = id
  local jkey = prefix .. 'job:' .. id
  local seq = tonumber(j.seq) + 1
  if immediate then
    redis.call('HSET', jkey, 'state', 'QUEUED', 'error', err, 'seq', seq)
    enqueue(prefix, id, j.tier, j.priority, j.rank)
    emit(id, seq, j, { kind = 'state', state = 'QUEUED', attempt = attempt, error = err, t = tonumber(now) })
    for _, v in ipairs({ id, 'QUEUED', err, '' }) do ENDED[#ENDED + 1] = v end
    return 'QUEUED'
  end
  -- Exponential backoff with "equal jitter": half fixed, half random.
  local delay = math.min(tonumber(j.backoff_max), tonumber(j.backoff_initial) * (2 ^ (attempt - 1)))
  delay = math.floor(delay / 2 + delay / 2 * jitter)
  local due = now + delay
  redis.call('HSET', jkey, 'state', 'SCHEDULED', 'error', err, 'run_at', due, 'seq', seq)
  redis.call('ZADD', prefix .. 'delayed', due, id)
  emit(id, seq, j, { kind = 'state', state = 'SCHEDULED', attempt = attempt, error = err,
    run_at = due, t = tonumber(now) })
  wake_at(due)
  for _, v in ipairs({ id, 'SCHEDULED', err, tostring(due) }) do ENDED[#ENDED + 1] = v end
  return 'SCHEDULED', due
end

-- Checks that `worker` holds the running lease of job `j` under `token`; returns nil or the
-- rejection message.
local function check_lease(j, token, worker)
  if not j then
    return 'job does not exist (finished jobs expire after the retention period)'
  end
  if tonumber(token) ~= tonumber(j.token) then
    return 'stale fencing token ' .. token .. '; the current lease has token ' .. j.token
  end
  if j.worker ~= worker then
    return 'job was never assigned to this worker'
  end
  if j.state ~= 'RUNNING' then
    return 'job is ' .. j.state .. ', not RUNNING'
  end
  return nil
end

-- Writes what the call collected: leased-set removals, expiry entries, events, wake-ups.
local function finish(prefix, now, retention_ms)
  if #UNLEASED > 0 then
    redis.call('ZREM', prefix .. 'leased', unpack(UNLEASED))
  end
  if #RETIRED > 0 then
    local args = {}
    local expires = tostring(tonumber(now) + tonumber(retention_ms))
    for _, id in ipairs(RETIRED) do
      args[#args + 1] = expires
      args[#args + 1] = id
    end
    redis.call('ZADD', prefix .. 'expiring', unpack(args))
  end
  if #EVENTS > 0 then
    redis.call('PUBLISH', 'cv:events', cjson.encode(EVENTS))
  end
  local queue = string.sub(prefix, 5, -3) -- the prefix is 'cv:{' .. queue .. '}:'
  if WAKE.ready then redis.call('PUBLISH', 'cv:wake', queue) end
  if WAKE.due then redis.call('PUBLISH', 'cv:wake', queue .. '|' .. WAKE.due) end
end
