-- Shared helpers, prepended to every transition script at load time (see scripts.rs).
-- Key layout (see keys.rs): every key of a queue starts with the prefix `cv:{<queue>}:`.
-- Job hash fields: id queue tenant tier priority state payload ctype labels attempt max_attempts
--   backoff_initial backoff_max timeout idem created run_at started finished timeout_at
--   pct stage msg result error worker session token seq rank w cb lk
--   then after par deps dfail (flows: see submit.lua, register.lua, resolve.lua)
-- (A running job's lease deadline is its score in the leased set, not a field.)
-- `seq` grows by one per event of the job; `w` counts the open watches of the job, and its
-- events are published only while it is above zero (nobody pays for events nobody reads).
-- `qw` = '1' marks a job of a queue a WatchJobs stream follows (the queue's `watched` key,
-- refreshed by the replicas serving such streams): its events are published too, with its
-- queue, tenant and labels, for the rest of its life.
--
-- Hot paths keep Redis's work per job small: they read only the fields they need (a job hash is
-- a listpack, searched field by field), and they pass times as the strings the caller sent
-- rather than as Lua numbers, which Redis would format with printf for every argument.
--
-- A script collects what many jobs share (leased-set removals, expiry entries, events, wake-ups)
-- in the tables below and writes each in one command at the end (`finish`), so a batch of jobs
-- costs a few commands per job plus a few per call.

-- Redis Cluster moves a slot key by key, and while this queue's slot moves, a command on a key
-- that is not (or no longer) on this node fails -- in the middle of a script, after its first
-- writes, which Redis does not undo. So every script first asks about two keys that never
-- exist: while the slot moves, that fails on either node (ASK on the one giving the slot,
-- TRYAGAIN on the one taking it) before anything is written, and the caller runs the whole
-- script again shortly (`MOVING`, see scripts.rs). Outside a move (or a cluster) it costs one
-- EXISTS.
do
  local moving = redis.pcall('EXISTS', KEYS[1] .. ':~moving1', KEYS[1] .. ':~moving2')
  if type(moving) == 'table' and moving.err then
    return redis.error_reply('MOVING ' .. moving.err)
  end
end

local TERMINAL = { SUCCEEDED = true, FAILED = true, CANCELLED = true }

local EVENTS = {}     -- events for watchers: one PUBLISH of a JSON array
local UNLEASED = {}   -- ids leaving the leased set: one ZREM
local RETIRED = {}    -- ids of finished jobs: one ZADD to the expiring index
local WAKE = { ready = false, due = nil } -- one PUBLISH on cv:wake per kind
-- Ended jobs with something to do after them (follow-ups to submit, jobs waiting for them):
-- one ZADD to the queue's `after` set, read by crate::flows, and one PUBLISH on cv:after.
local AFTER = {}
-- Attempts that `retry_or_fail` ended, for the caller's history and metrics: id, new state,
-- error, run_at ('' unless SCHEDULED), tier; five flat entries per job.
local ENDED = {}

-- The job fields the transitions read (`FIELDS`), and the fewer that a lease check and `settle`
-- need (`SETTLE_FIELDS`).
local FIELDS = { 'state', 'token', 'worker', 'attempt', 'seq', 'w', 'qw', 'idem', 'tenant', 'result',
  'lk', 'after', 'session', 'max_attempts', 'backoff_initial', 'backoff_max', 'tier',
  'priority', 'rank', 'timeout', 'timeout_at', 'error', 'adopt', 'atok' }
local SETTLE_FIELDS = { 'state', 'token', 'worker', 'attempt', 'seq', 'w', 'qw', 'idem', 'tenant', 'result',
  'lk', 'after', 'tier', 'adopt', 'atok' }

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
  local followed = j.qw == '1'
  if followed or (j.w and j.w ~= '0') then
    ev.id = id
    ev.seq = seq
    -- `finish` adds what a WatchJobs stream filters by.
    if followed then ev.scope = true end
    EVENTS[#EVENTS + 1] = ev
  end
end

-- Whether a WatchJobs stream follows the queue (read at most once per call): new jobs, and
-- jobs that come back, are then marked `qw`.
local WATCHED = nil
local function queue_watched(prefix)
  if WATCHED == nil then WATCHED = redis.call('EXISTS', prefix .. 'watched') == 1 end
  return WATCHED
end

-- Score in a tier's ready set: priority first, then submission order.
local function ready_score(priority, rank)
  return tonumber(priority) * 1099511627776 + tonumber(rank)
end

-- Per-key limits (checked by lease.lua and submit.lua). A job's limit key `lk` counts per tenant, as
-- `<tenant>/<lk>` (`k` below); its keys, under the queue's prefix:
--   kn:<k>  SET of its RUNNING jobs (kept only where a concurrency limit applies)
--   kp:<k>  ZSET of its QUEUED jobs parked while the key is blocked, by ready score
--   kr:<k>  its GCRA time (where a rate applies)
--   ktimer  ZSET of rate-blocked keys, by when they may lease again
-- A parked job is out of the ready sets, so a blocked key costs the lease nothing; it comes
-- back (`unpark`) when a slot frees, when its key's time comes, or after a lease of its key.

-- The limit key of a job with `tenant` and `lk` fields, or nil.
local function limit_key(j)
  if j.lk and j.lk ~= '' then return j.tenant .. '/' .. j.lk end
  return nil
end

-- Puts a QUEUED job in line with `score`: in its tier's ready set or, while its key has
-- parked jobs, behind them (so a key's jobs keep their order). `j` needs tier, tenant, lk.
local function admit(prefix, id, j, score)
  local k = limit_key(j)
  if k and redis.call('EXISTS', prefix .. 'kp:' .. k) == 1 then
    redis.call('ZADD', prefix .. 'kp:' .. k, score, id)
    return
  end
  redis.call('ZADD', prefix .. 'ready:' .. j.tier, score, id)
  WAKE.ready = true
end

-- Moves up to `count` of key `k`'s parked jobs back to their ready sets, first in line first.
local function unpark(prefix, k, count)
  local popped = redis.call('ZPOPMIN', prefix .. 'kp:' .. k, count)
  for i = 1, #popped, 2 do
    local tier = redis.call('HGET', prefix .. 'job:' .. popped[i], 'tier')
    if tier then
      redis.call('ZADD', prefix .. 'ready:' .. tier, popped[i + 1], popped[i])
      WAKE.ready = true
    end
  end
  return #popped / 2
end

-- The per-key limits a script was given in ARGV[first..last], four per limit (pattern
-- concurrency period burst, most specific first; a pattern is a key, or a prefix and `*`).
-- Returns a function from a job's limit key (as submitted) to its limit, or false.
local function key_limits(first, last)
  local list, cache = {}, {}
  for i = first, last, 4 do
    local pattern = ARGV[i]
    local starts = string.sub(pattern, -1) == '*' and string.sub(pattern, 1, -2) or nil
    list[#list + 1] = { exact = pattern, starts = starts, conc = tonumber(ARGV[i + 1]),
      period = tonumber(ARGV[i + 2]), burst = tonumber(ARGV[i + 3]) }
  end
  return function(lk)
    local found = cache[lk]
    if found ~= nil then return found end
    found = false
    for _, l in ipairs(list) do
      if (l.starts and string.sub(lk, 1, #l.starts) == l.starts) or lk == l.exact then
        found = l
        break
      end
    end
    cache[lk] = found
    return found
  end
end

-- The state of limit key `k` a call works with, read once per call: its RUNNING jobs (`run`)
-- and GCRA time (`tat`); a lease that takes a slot or spends the rate updates it (`dirty`).
local KEY = {}
local function key_state_of(prefix, now, k, lim)
  local st = KEY[k]
  if st then return st end
  st = { run = 0, tat = now, dirty = false, lim = lim }
  if lim.conc > 0 then
    local running = prefix .. 'kn:' .. k
    st.run = redis.call('SCARD', running)
    if st.run >= lim.conc then
      -- Full: make sure every slot is held by a job that still runs, so a slot can never leak
      -- (every path out of RUNNING frees it; this is the proof, paid only by full keys).
      for _, m in ipairs(redis.call('SMEMBERS', running)) do
        if redis.call('HGET', prefix .. 'job:' .. m, 'state') ~= 'RUNNING' then
          redis.call('SREM', running, m)
          st.run = st.run - 1
        end
      end
    end
  end
  if lim.period > 0 then
    st.tat = math.max(tonumber(redis.call('GET', prefix .. 'kr:' .. k)) or 0, now)
  end
  KEY[k] = st
  return st
end

-- How many more leases key state `st` allows now and, when its rate alone stops it, when the
-- next one fits.
local function key_allowance(now, st)
  local lim, allowed, at = st.lim, 1000000, nil
  if lim.conc > 0 then allowed = lim.conc - st.run end
  if lim.period > 0 then
    local r = math.floor((now + lim.burst * lim.period - st.tat) / lim.period)
    if r <= 0 and allowed > 0 then at = st.tat + lim.period - lim.burst * lim.period end
    allowed = math.min(allowed, r)
  end
  return allowed, at
end

-- A job leaves RUNNING: its key's slot is free, and the key's next parked job may take it.
local function free_slot(prefix, id, j)
  local k = limit_key(j)
  if k and redis.call('SREM', prefix .. 'kn:' .. k, id) == 1 then unpark(prefix, k, 1) end
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
  if j.state == 'RUNNING' then
    UNLEASED[#UNLEASED + 1] = id
    free_slot(prefix, id, j)
  end
  redis.call('PEXPIRE', jkey, retention_ms)
  if j.idem and j.idem ~= '' then
    redis.call('PEXPIRE', prefix .. 'idem:' .. j.tenant .. ':' .. j.idem, retention_ms)
  end
  RETIRED[#RETIRED + 1] = id
  if j.after then AFTER[#AFTER + 1] = id end
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
    for _, v in ipairs({ id, 'FAILED', err, '', j.tier or '' }) do ENDED[#ENDED + 1] = v end
    return 'FAILED'
  end
  UNLEASED[#UNLEASED + 1] = id
  free_slot(prefix, id, j)
  local jkey = prefix .. 'job:' .. id
  local seq = tonumber(j.seq) + 1
  if immediate then
    redis.call('HSET', jkey, 'state', 'QUEUED', 'error', err, 'seq', seq)
    admit(prefix, id, j, ready_score(j.priority, j.rank))
    emit(id, seq, j, { kind = 'state', state = 'QUEUED', attempt = attempt, error = err, t = tonumber(now) })
    for _, v in ipairs({ id, 'QUEUED', err, '', j.tier or '' }) do ENDED[#ENDED + 1] = v end
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
  for _, v in ipairs({ id, 'SCHEDULED', err, tostring(due), j.tier or '' }) do ENDED[#ENDED + 1] = v end
  return 'SCHEDULED', due
end

-- Takes back the lease of a running job that never ran (a worker declined it, or it never
-- reached one): the job goes back to its place in line, and its attempt does not count.
-- Returns the attempt count it is back at.
local function unlease(prefix, id, j, now)
  UNLEASED[#UNLEASED + 1] = id
  free_slot(prefix, id, j)
  local attempt = tonumber(j.attempt) - 1
  local seq = tonumber(j.seq) + 1
  redis.call('HSET', prefix .. 'job:' .. id, 'state', 'QUEUED', 'attempt', attempt, 'seq', seq)
  admit(prefix, id, j, ready_score(j.priority, j.rank))
  emit(id, seq, j, { kind = 'state', state = 'QUEUED', attempt = attempt, t = tonumber(now) })
  return attempt
end

-- Restored from the database RUNNING after Redis lost its data (restore.lua), a job's lease
-- went with the data: `adopt` holds the token restore.lua gave it, and the first holder that
-- speaks for it (a report, a renewal, a reattach) takes it over under its own old token
-- (`atok`), so the result of a run the loss interrupted is not thrown away. A new lease changes
-- `token`, which ends the arrangement.
local function adopted(j)
  return j.adopt ~= nil and j.adopt ~= false and j.adopt == j.token
end

-- Whether `token` is the lease's: its own, or the adopting holder's (see `adopted`).
local function holds(j, token)
  if tonumber(token) == tonumber(j.token) then return true end
  return adopted(j) and j.atok == token
end

-- Checks that `worker` holds the running lease of job `id` (`j`) under `token`; returns nil, or
-- the refusal {code, message}. A job Redis does not have in a queue whose data it lost and
-- that is not restored yet (no `ok` key, see submit.lua) is UNAVAILABLE: the worker keeps its
-- report and sends it again once the restore put the job back.
local function check_lease(prefix, id, j, token, worker)
  if not j then
    if redis.call('EXISTS', prefix .. 'ok') == 0 then
      return { 'UNAVAILABLE', 'Redis lost its data; the queue is being restored' }
    end
    return { 'FAILED_PRECONDITION', 'job does not exist (finished jobs expire after the retention period)' }
  end
  if adopted(j) and j.state == 'RUNNING' and (j.atok == nil or j.atok == false) then
    redis.call('HSET', prefix .. 'job:' .. id, 'worker', worker, 'atok', token)
    j.worker, j.atok = worker, token
  end
  if not holds(j, token) then
    return { 'FAILED_PRECONDITION', 'stale fencing token ' .. token .. '; the current lease has token ' .. j.token }
  end
  if j.worker ~= worker then
    return { 'FAILED_PRECONDITION', 'job was never assigned to this worker' }
  end
  if j.state ~= 'RUNNING' then
    return { 'FAILED_PRECONDITION', 'job is ' .. j.state .. ', not RUNNING' }
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
  local queue = string.sub(prefix, 5, -3) -- the prefix is 'cv:{' .. queue .. '}:'
  if #EVENTS > 0 then
    for _, ev in ipairs(EVENTS) do
      if ev.scope == true then
        local v = redis.call('HMGET', prefix .. 'job:' .. ev.id, 'tenant', 'labels')
        ev.scope = { q = queue, tenant = v[1] or '', labels = v[2] or '' }
      end
    end
    redis.call('PUBLISH', 'cv:events', cjson.encode(EVENTS))
  end
  if #AFTER > 0 then
    local args = {}
    for _, id in ipairs(AFTER) do
      args[#args + 1] = now
      args[#args + 1] = id
    end
    redis.call('ZADD', prefix .. 'after', unpack(args))
    redis.call('PUBLISH', 'cv:after', queue)
  end
  if WAKE.ready then redis.call('PUBLISH', 'cv:wake', queue) end
  if WAKE.due then redis.call('PUBLISH', 'cv:wake', queue .. '|' .. WAKE.due) end
end
