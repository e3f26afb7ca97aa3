-- submit: creates a batch of jobs in one queue, all or none. A job whose idempotency key the
-- tenant already used returns the first job instead (the same key with another payload refuses
-- the whole batch, before anything is written).
-- A queue's `ok` key says Redis has the queue as the database does: set here when `create` is
-- 1 (the caller saw the reconciler's marker, or runs without a database) and by restore.lua. An
-- empty Redis has neither, so a submit cannot slip in before the restore and miss an
-- idempotency key the database still holds.
-- Within a tier and priority, jobs of different fairness keys take turns (start-time fair
-- queueing): a job's place in the ready set (`rank`) is one past the later of its key's last
-- place and the place last leased there (advanced by lease.lua), so a key that was idle starts
-- at the front of the line instead of banking turns. One key alone is FIFO.
-- KEYS[1] the queue's all-jobs index
-- A job whose limit key is blocked, or has parked jobs (see common.lua), is parked at once,
-- behind them, instead of entering its ready set only to be parked by the next lease.
-- A job with dependencies is WAITING, in no line, until resolve.lua lets it in; the caller
-- registers it with each dependency (register.lua).
-- In a queue a WatchJobs stream follows (see common.lua), each new job is marked `qw` and
-- announced with an event of seq 0 that carries the job (its payload aside).
-- A repeat (`repeat` 1: the caller's earlier call with these same jobs went without an answer)
-- treats a job that exists already as its own repeat: made again, the call changes nothing the
-- first one did.
-- ARGV prefix tenant now create(0|1) repeat(0|1) nlimits, then the queue's key limits as
--   lease.lua takes them (4 per limit), then 22 per job: id tier priority payload ctype labels
--   max_attempts backoff_initial backoff_max timeout idem run_at fairness_key callback_url
--   limit_key on_success parent_id depends_on(JSON array or '') if_dependency_fails('cancel'|'')
--   keep('1'|'') inputs(JSON array or '') trace_context(W3C traceparent or '')
-- Returns {'OK', {answer...}} | {'ALREADY_EXISTS', message} | {'NO_QUEUE'}, an answer per job:
--   1 when it was created as sent (the caller knows its fields), or the first job's {field, value...}
local prefix, tenant, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local PER_JOB = 22
local FIRST = 7 + 4 * tonumber(ARGV[6])
local limit_of = key_limits(7, FIRST - 1)
local again = ARGV[5] == '1'
local queue = string.sub(prefix, 5, -3)
if ARGV[4] ~= '1' and redis.call('EXISTS', prefix .. 'ok') == 0 then return { 'NO_QUEUE' } end

-- 1. Idempotency keys, checked before any write.
local first = {} -- job index -> id of the job it repeats
local seen = {}  -- idempotency key -> {id, payload} of a job earlier in this batch
local fresh = 0
for i = FIRST, #ARGV, PER_JOB do
  local id, payload, idem = ARGV[i], ARGV[i + 3], ARGV[i + 10]
  local earlier = nil
  if again and redis.call('EXISTS', prefix .. 'job:' .. id) == 1 then
    first[i] = id
  elseif idem ~= '' then
    local ikey = prefix .. 'idem:' .. tenant .. ':' .. idem
    earlier = seen[idem]
    if not earlier then
      local fid = redis.call('GET', ikey)
      if fid then
        local fpayload = redis.call('HGET', prefix .. 'job:' .. fid, 'payload')
        if fpayload then earlier = { fid, fpayload } end
      end
    end
    if earlier then
      if earlier[2] ~= payload then
        return { 'ALREADY_EXISTS', 'idempotency key "' .. idem .. '" was already used by job ' ..
          earlier[1] .. ' with a different payload' }
      end
      first[i] = earlier[1]
    else
      seen[idem] = { id, payload }
    end
  end
  if not first[i] then fresh = fresh + 1 end
end

-- A job's place among its tier and priority: see the top. Per tier and priority, one sorted
-- set holds each key's last place and, as member `\0v`, the place last leased; `fair` caches
-- what this call read or wrote, and the writes go out in one ZADD per set.
local fair = {}
local function place(tier, priority, key)
  local zkey = prefix .. 'fair:' .. tier .. ':' .. priority
  local z = fair[zkey]
  if not z then
    local scores = redis.call('ZMSCORE', zkey, '\0v', key)
    z = { v = tonumber(scores[1]) or 0, places = { [key] = tonumber(scores[2]) or 0 }, dirty = {} }
    fair[zkey] = z
  elseif z.places[key] == nil then
    z.places[key] = tonumber(redis.call('ZSCORE', zkey, key)) or 0
  end
  local p = math.max(z.v, z.places[key]) + 1
  z.places[key] = p
  z.dirty[key] = p
  return p
end

-- Whether a new QUEUED job of limit key `lk` (tenant's key `k`) should be parked: the key has
-- parked jobs, or is at its limit now (a rate-blocked key gets its timer, as in lease.lua).
local function blocked(k, lk)
  if redis.call('EXISTS', prefix .. 'kp:' .. k) == 1 then return true end
  local lim = limit_of(lk)
  if not lim then return false end
  local allowed, at = key_allowance(now, key_state_of(prefix, now, k, lim))
  if allowed > 0 then return false end
  if at and redis.call('ZADD', prefix .. 'ktimer', at, k) == 1 then wake_at(at) end
  return true
end

-- 2. The new jobs: one HSET each; index and queue entries in one ZADD per set.
if ARGV[4] == '1' then redis.call('SET', prefix .. 'ok', '1') end
local rank = 0
if fresh > 0 then rank = redis.call('INCRBY', prefix .. 'seq', fresh) - fresh end
local all, ready, delayed = {}, {}, {}
local out = {}
for i = FIRST, #ARGV, PER_JOB do
  if first[i] then
    out[#out + 1] = redis.call('HGETALL', prefix .. 'job:' .. first[i])
  else
    rank = rank + 1
    local id, tier, priority, idem = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 10]
    local spot = place(tier, priority, ARGV[i + 12])
    -- Times go in as the caller's strings: Redis would format Lua numbers with printf.
    local run_at, state = ARGV[i + 11], 'QUEUED'
    if tonumber(run_at) > now then state = 'SCHEDULED' else run_at = ARGV[3] end
    local deps = ARGV[i + 17]
    if deps ~= '' then state = 'WAITING' end
    local fields = { 'id', id, 'queue', queue, 'tenant', tenant, 'tier', tier, 'priority', priority,
      'state', state, 'payload', ARGV[i + 3], 'ctype', ARGV[i + 4], 'labels', ARGV[i + 5],
      'attempt', '0', 'max_attempts', ARGV[i + 6], 'backoff_initial', ARGV[i + 7],
      'backoff_max', ARGV[i + 8], 'timeout', ARGV[i + 9], 'idem', idem, 'created', ARGV[3],
      'run_at', run_at, 'token', '0', 'seq', '0', 'rank', spot }
    -- Most jobs have no webhook and no limit key: no field for them.
    if ARGV[i + 13] ~= '' then
      fields[#fields + 1] = 'cb'
      fields[#fields + 1] = ARGV[i + 13]
    end
    local lk = ARGV[i + 14]
    if lk ~= '' then
      fields[#fields + 1] = 'lk'
      fields[#fields + 1] = lk
    end
    -- Flows: follow-ups to submit on success (and the flag that sends a job's end to
    -- crate::flows), the parent, the dependencies.
    if ARGV[i + 15] ~= '' then
      for _, v in ipairs({ 'then', ARGV[i + 15], 'after', '1' }) do fields[#fields + 1] = v end
    end
    if ARGV[i + 16] ~= '' then
      fields[#fields + 1] = 'par'
      fields[#fields + 1] = ARGV[i + 16]
    end
    if deps ~= '' then
      for _, v in ipairs({ 'deps', deps, 'dfail', ARGV[i + 18] }) do fields[#fields + 1] = v end
      redis.call('SADD', prefix .. 'pending:' .. id, unpack(cjson.decode(deps)))
    end
    if ARGV[i + 19] ~= '' then
      fields[#fields + 1] = 'keep'
      fields[#fields + 1] = ARGV[i + 19]
    end
    if ARGV[i + 20] ~= '' then
      fields[#fields + 1] = 'inputs'
      fields[#fields + 1] = ARGV[i + 20]
    end
    if ARGV[i + 21] ~= '' then
      fields[#fields + 1] = 'tp'
      fields[#fields + 1] = ARGV[i + 21]
    end
    if queue_watched(prefix) then
      local job = {}
      for k = 1, #fields, 2 do
        if fields[k] ~= 'payload' then
          job[#job + 1] = fields[k]
          job[#job + 1] = fields[k + 1]
        end
      end
      fields[#fields + 1] = 'qw'
      fields[#fields + 1] = '1'
      EVENTS[#EVENTS + 1] = { id = id, seq = 0, kind = 'state', state = state, t = now, job = job,
        scope = { q = queue, tenant = tenant, labels = ARGV[i + 5] } }
    end
    redis.call('HSET', prefix .. 'job:' .. id, unpack(fields))
    if idem ~= '' then redis.call('SET', prefix .. 'idem:' .. tenant .. ':' .. idem, id) end
    all[#all + 1] = rank
    all[#all + 1] = id
    if state == 'WAITING' then
      -- In no line until its dependencies succeed.
    elseif state == 'QUEUED' and lk ~= '' and blocked(tenant .. '/' .. lk, lk) then
      redis.call('ZADD', prefix .. 'kp:' .. tenant .. '/' .. lk, ready_score(priority, spot), id)
    elseif state == 'QUEUED' then
      ready[tier] = ready[tier] or {}
      table.insert(ready[tier], ready_score(priority, spot))
      table.insert(ready[tier], id)
    else
      delayed[#delayed + 1] = run_at
      delayed[#delayed + 1] = id
      wake_at(tonumber(run_at))
    end
    out[#out + 1] = 1
  end
end
if #all > 0 then redis.call('ZADD', KEYS[1], unpack(all)) end
for tier, entries in pairs(ready) do
  redis.call('ZADD', prefix .. 'ready:' .. tier, unpack(entries))
  WAKE.ready = true
end
if #delayed > 0 then redis.call('ZADD', prefix .. 'delayed', unpack(delayed)) end
for zkey, z in pairs(fair) do
  local args = {}
  for key, p in pairs(z.dirty) do
    args[#args + 1] = p
    args[#args + 1] = key
  end
  if #args > 0 then redis.call('ZADD', zkey, unpack(args)) end
end
finish(prefix, now, 0)
return { 'OK', out }
