-- restore: puts jobs of one queue back from the database after Redis lost them (the
-- reconciler). A job Redis still has is left alone. When an idempotency key already names
-- another job (one submitted before the restore was done, or a row of a submit Redis never
-- took), both jobs stay, and the key goes to the older: no accepted job is ever dropped, at the
-- price of running a rare duplicate. An unfinished job goes back to wait: QUEUED,
-- or SCHEDULED until its run_at. A RUNNING one lost its lease with the data, but its worker may
-- still run it: it comes back RUNNING, for the first holder that speaks for it to take over
-- (common.lua `adopted`), with a lease of `ttl` that the usual reclaim ends if nobody does. A
-- finished job comes back only for the rest of its retention, so its idempotency key keeps
-- answering.
-- KEYS[1] the queue's all-jobs index
-- ARGV prefix now retention ttl, then 32 per job: id tenant tier priority state payload ctype labels
--   attempt max_attempts backoff_initial backoff_max timeout idem created run_at started
--   finished pct stage msg result error callback_url limit_key on_success parent_id depends_on
--   if_dependency_fails artifacts keep inputs
-- A WAITING job comes back waiting for all its dependencies; the caller registers it with
-- them again (their `waiters` sets went with the data), which resolves those that ended. A
-- SUCCEEDED job with follow-ups goes to crate::flows again (its follow-ups are idempotent).
-- Returns one answer per job: 0 left alone, 1 restored as it was, 2 restored RUNNING for its
-- holder, 3 not restored: a repeat of the job its idempotency key names.
local prefix, now, retention, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local PER_JOB = 32
local queue = string.sub(prefix, 5, -3)

redis.call('SET', prefix .. 'ok', '1') -- see submit.lua
local out = {}
for i = 5, #ARGV, PER_JOB do
  local id, tenant, tier, priority, state = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local idem, run_at, finished, err = ARGV[i + 13], tonumber(ARGV[i + 15]), ARGV[i + 17], ARGV[i + 22]
  local jkey = prefix .. 'job:' .. id
  local ikey = prefix .. 'idem:' .. tenant .. ':' .. idem
  local answer = 0
  local keep_for = nil
  if TERMINAL[state] then keep_for = (tonumber(finished) or now) + retention - now end
  local owner = idem ~= '' and redis.call('GET', ikey)
  local take_key = idem ~= ''
  if owner and owner ~= id then
    local owner_created = redis.call('HGET', prefix .. 'job:' .. owner, 'created')
    take_key = not owner_created or tonumber(ARGV[i + 14]) < tonumber(owner_created)
  end
  -- A row that never ran whose key names a job Redis has is the same submission made again
  -- (a retry during the restore, or a call that went without an answer): it is not put back,
  -- and the caller deletes its row (answer 3), so one key stays one job.
  local repeat_of_owner = owner and owner ~= id and tonumber(ARGV[i + 8]) == 0
    and (state == 'QUEUED' or state == 'SCHEDULED' or state == 'WAITING')
    and redis.call('EXISTS', prefix .. 'job:' .. owner) == 1
  if repeat_of_owner and redis.call('EXISTS', jkey) == 0 then
    answer = 3
  elseif redis.call('EXISTS', jkey) == 0 and not (keep_for and keep_for <= 0) then
    answer = 1
    if state == 'RUNNING' then
      answer = 2
    elseif state == 'SCHEDULED' and run_at <= now then
      state = 'QUEUED'
    end
    local rank = redis.call('INCR', prefix .. 'seq')
    -- Fencing tokens and event numbers restart above anything handed out before the loss, so
    -- a zombie worker's token never matches and a watcher's resume point never does either.
    redis.call('HSET', jkey, 'id', id, 'queue', queue, 'tenant', tenant, 'tier', tier,
      'priority', priority, 'state', state, 'payload', ARGV[i + 5], 'ctype', ARGV[i + 6],
      'labels', ARGV[i + 7], 'attempt', ARGV[i + 8], 'max_attempts', ARGV[i + 9],
      'backoff_initial', ARGV[i + 10], 'backoff_max', ARGV[i + 11], 'timeout', ARGV[i + 12],
      'idem', idem, 'created', ARGV[i + 14], 'run_at', ARGV[i + 15], 'started', ARGV[i + 16],
      'finished', finished, 'pct', ARGV[i + 18], 'stage', ARGV[i + 19], 'msg', ARGV[i + 20],
      'result', ARGV[i + 21], 'error', err, 'token', ARGV[2], 'seq', ARGV[2], 'rank', '0',
      'w', '0')
    if queue_watched(prefix) then redis.call('HSET', jkey, 'qw', '1') end
    if ARGV[i + 23] ~= '' then redis.call('HSET', jkey, 'cb', ARGV[i + 23]) end
    if ARGV[i + 24] ~= '' then redis.call('HSET', jkey, 'lk', ARGV[i + 24]) end
    if ARGV[i + 25] ~= '' then
      redis.call('HSET', jkey, 'then', ARGV[i + 25], 'after', '1')
      if state == 'SUCCEEDED' then AFTER[#AFTER + 1] = id end
    end
    if ARGV[i + 26] ~= '' then redis.call('HSET', jkey, 'par', ARGV[i + 26]) end
    if ARGV[i + 29] ~= '' then redis.call('HSET', jkey, 'arts', ARGV[i + 29]) end
    if ARGV[i + 30] ~= '' then redis.call('HSET', jkey, 'keep', ARGV[i + 30]) end
    if ARGV[i + 31] ~= '' then redis.call('HSET', jkey, 'inputs', ARGV[i + 31]) end
    -- A WAITING job restored before this one listed itself already (register.lua).
    if redis.call('EXISTS', prefix .. 'waiters:' .. id) == 1 then
      redis.call('PERSIST', prefix .. 'waiters:' .. id) -- see register.lua
      redis.call('HSET', jkey, 'after', '1')
      if TERMINAL[state] and ARGV[i + 25] == '' then AFTER[#AFTER + 1] = id end
    end
    if ARGV[i + 27] ~= '' then
      redis.call('HSET', jkey, 'deps', ARGV[i + 27], 'dfail', ARGV[i + 28])
      if state == 'WAITING' then
        redis.call('SADD', prefix .. 'pending:' .. id, unpack(cjson.decode(ARGV[i + 27])))
      end
    end
    if take_key then redis.call('SET', ikey, id) end
    redis.call('ZADD', KEYS[1], rank, id)
    if keep_for then
      redis.call('PEXPIRE', jkey, keep_for)
      if take_key then redis.call('PEXPIRE', ikey, keep_for) end
      redis.call('ZADD', prefix .. 'expiring', now + keep_for, id)
    elseif state == 'RUNNING' then
      redis.call('HSET', jkey, 'adopt', ARGV[2], 'timeout_at', now + tonumber(ARGV[i + 12]))
      redis.call('ZADD', prefix .. 'leased', now + ttl, id)
      wake_at(now + ttl)
      -- It runs: it counts against its limit key's concurrency again.
      local k = limit_key({ tenant = tenant, lk = ARGV[i + 24] })
      if k then redis.call('SADD', prefix .. 'kn:' .. k, id) end
    elseif state == 'WAITING' then
      -- In no line until its dependencies succeed (see above).
    elseif state == 'QUEUED' then
      -- Place 0: jobs that waited before the loss go ahead of those submitted since (among
      -- themselves, in id order, which is submission order).
      admit(prefix, id, { tier = tier, tenant = tenant, lk = ARGV[i + 24] }, ready_score(priority, 0))
    else
      redis.call('ZADD', prefix .. 'delayed', run_at, id)
      wake_at(run_at)
    end
  end
  out[#out + 1] = answer
end
finish(prefix, now, retention)
return out
