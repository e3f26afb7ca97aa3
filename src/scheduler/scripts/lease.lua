-- lease: reclaims expired leases, promotes due delayed jobs, then leases up to n ready jobs,
-- picking tiers by weighted fair share (stride scheduling) and, within a tier, by priority then
-- submission order. n = 0 is the sweep: it only reclaims and promotes, drops expired ids from
-- the all-jobs index, and says when the queue next needs a look.
-- KEYS[1] the queue's leased set
-- ARGV prefix now n ttl session worker retention jitter w_free w_pro w_premium w_enterprise
--   cap (most RUNNING at once in the queue, across workers and replicas; 0 = no cap)
--   period burst (a queue-wide rate: one lease per `period` ms, up to `burst` at once, by GCRA;
--   period 0 = no rate)
--   max_wait (aging: a tier whose next job became due this many ms ago goes first; 0 = none)
--   then per key limit, most specific first: pattern concurrency period burst (0 = none); a
--   pattern is a limit key, or a prefix followed by `*`
-- A job whose limit key is at its limit is parked (common.lua) instead of leased, and the
-- line moves on to the next job; a key blocked by its rate gets a timer (`ktimer`), which the
-- next_due answer and a wake-up include, so a dispatcher comes back exactly when it opens.
-- Returns {next_due_ms or -1, more_ready 0|1, next_check_ms or -1 (a lease call: the earliest
--   lease deadline), ENDED (see common.lua), {job field, value...}...} (the leased jobs' fields
--   an assignment needs)
local prefix, now, n, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local session, worker = ARGV[5], ARGV[6]
local retention, jitter = tonumber(ARGV[7]), tonumber(ARGV[8])
local weights = { tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]) }
local cap = tonumber(ARGV[13]) or 0
local period, burst = tonumber(ARGV[14]) or 0, tonumber(ARGV[15]) or 1
local leased, delayed, expiring = KEYS[1], prefix .. 'delayed', prefix .. 'expiring'
local ktimer = prefix .. 'ktimer'

local max_wait = tonumber(ARGV[16]) or 0
local limit_of = key_limits(17, #ARGV)

-- The score of a sorted set's first entry, or nil when it is empty.
local function first_score(key)
  return tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
end

-- 1. Leases whose deadline passed: the worker died without a goodbye, or the job ran past its
-- timeout (renewals stop at the timeout).
local next_lease = first_score(leased)
if next_lease and next_lease <= now then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, 100)) do
    local j = load(prefix .. 'job:' .. id)
    if not j or j.state ~= 'RUNNING' then
      UNLEASED[#UNLEASED + 1] = id
    else
      local err = 'lease expired: the worker stopped renewing it'
      if j.timeout_at and tonumber(j.timeout_at) <= now then
        err = 'timed out after ' .. math.floor(tonumber(j.timeout) / 1000) .. 's'
      end
      retry_or_fail(prefix, id, j, now, jitter, err, retention, false)
    end
  end
  next_lease = false -- unknown until the removals are written (`finish`)
end

-- 2. Delayed jobs that are due.
local next_due = first_score(delayed)
if next_due and next_due <= now then
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    local j = load(prefix .. 'job:' .. id)
    if j and j.state == 'SCHEDULED' then
      local seq = tonumber(j.seq) + 1
      redis.call('HSET', prefix .. 'job:' .. id, 'state', 'QUEUED', 'seq', seq)
      admit(prefix, id, j, ready_score(j.priority, j.rank))
      emit(id, seq, j, { kind = 'state', state = 'QUEUED', attempt = tonumber(j.attempt), t = now })
    end
  end
  redis.call('ZREM', delayed, unpack(due))
  next_due = first_score(delayed)
end

-- 2b. Keys whose rate opens again: their first parked job goes back in line.
local next_key = first_score(ktimer)
if next_key and next_key <= now then
  local due = redis.call('ZRANGEBYSCORE', ktimer, '-inf', now, 'LIMIT', 0, 100)
  redis.call('ZREM', ktimer, unpack(due))
  for _, k in ipairs(due) do unpark(prefix, k, 1) end
  next_key = first_score(ktimer)
end
-- Keeps the timer of a rate-blocked key (a wake-up for every replica when it is new).
local function key_timer(k, at)
  if redis.call('ZADD', ktimer, at, k) == 1 then wake_at(at) end
  if next_key == nil or at < next_key then next_key = at end
end

local paused = redis.call('EXISTS', prefix .. 'paused') == 1
-- A queue-wide cap counts what runs now: the leased set, less what step 1 just took out of it.
-- Derived, not counted, so no terminal path can leak a slot.
local capped, full = false, false
if cap > 0 and n > 0 then
  local free = cap - (redis.call('ZCARD', leased) - #UNLEASED)
  if free <= n then
    n = math.max(free, 0)
    full = true -- after this call nothing more fits, whatever is left waiting
  end
  capped = n == 0
end
-- A queue-wide rate (GCRA): `tat` is when the budget would be back to full; each lease spends
-- `period` of it. When it runs out, `rate_next` is when the next lease fits, and the dispatcher
-- is told to come back exactly then (as for a delayed job), not to poll.
local tat, rate_next = nil, nil
if period > 0 and n > 0 then
  tat = math.max(tonumber(redis.call('GET', prefix .. 'rate')) or 0, now)
  local allowed = math.floor((now + burst * period - tat) / period)
  if allowed <= n then
    n = math.max(allowed, 0)
    full = true
    rate_next = tat + (n + 1) * period - burst * period
  end
  capped = capped or n == 0
end
-- The earliest a caller should look again: a due delayed job, the rate's next opening, or a
-- key's.
local function next_look(due)
  if rate_next and (due == nil or rate_next < due) then due = rate_next end
  if next_key and (due == nil or next_key < due) then due = next_key end
  return due
end

if n == 0 or paused then
  -- 3. The sweep: drop the ids of expired jobs from the all-jobs index (ListJobs).
  local next_expiry = first_score(expiring)
  if next_expiry and next_expiry <= now then
    local gone = redis.call('ZRANGEBYSCORE', expiring, '-inf', now, 'LIMIT', 0, 500)
    redis.call('ZREM', prefix .. 'all', unpack(gone))
    redis.call('ZREM', expiring, unpack(gone))
    next_expiry = first_score(expiring)
  end
  local more = 0
  if not paused and not capped then
    more = redis.call('EXISTS', prefix .. 'ready:1', prefix .. 'ready:2', prefix .. 'ready:3',
      prefix .. 'ready:4')
  end
  -- Promoted jobs wake nobody while the queue is paused; resuming does.
  WAKE.ready = WAKE.ready and not paused
  finish(prefix, now, retention)
  -- A lease that may expire, or expired ids to drop, is the next reason to look (due jobs have
  -- their own timer, `next_due`).
  if next_lease == false then next_lease = first_score(leased) end
  local next_check = next_lease
  if next_check == nil or (next_expiry and next_expiry < next_check) then next_check = next_expiry end
  -- Work after ended jobs that a replica claimed and never finished (it died): announce it
  -- again once the claim lapsed (after.lua), and look again when the next one does.
  local next_after = first_score(prefix .. 'after')
  if next_after and next_after <= now then
    redis.call('PUBLISH', 'cv:after', string.sub(prefix, 5, -3))
    next_after = now + 30000
  end
  if next_after and (next_check == nil or next_after < next_check) then next_check = next_after end
  -- The rate's opening matters only to jobs that wait.
  if rate_next and (paused or redis.call('EXISTS', prefix .. 'ready:1', prefix .. 'ready:2',
      prefix .. 'ready:3', prefix .. 'ready:4') == 0) then
    rate_next = nil
  end
  return { next_look(next_due) or -1, more > 0 and 1 or 0, next_check or -1, ENDED }
end

-- 4. Stride scheduling: each tier has a pass that grows by 1/weight per lease; the non-empty
-- tier with the smallest pass goes next. A tier that was idle starts at the current virtual
-- time, so it cannot bank credit while empty and then flood the workers. The plan is made
-- first, then each tier's share is popped in one ZPOPMIN. Jobs of blocked keys are parked,
-- give their tier its turn back, and a new plan fills their places (a bounded number of times).
local stride_key = prefix .. 'stride'
local s = redis.call('HMGET', stride_key, 'p1', 'p2', 'p3', 'p4', 'vt')
local pass, vt = {}, tonumber(s[5]) or 0
local sizes = {}
for t = 1, 4 do
  pass[t] = tonumber(s[t]) or 0
  sizes[t] = redis.call('ZCARD', prefix .. 'ready:' .. t)
end
-- Aging: a tier whose next job has waited longer than max_wait takes this call's first pick
-- (the oldest such tier); then it goes on at its weight.
local aged = nil
if max_wait > 0 then
  local oldest = nil
  for t = 1, 4 do
    if sizes[t] > 0 then
      local head = redis.call('ZRANGE', prefix .. 'ready:' .. t, 0, 0)[1]
      local since = tonumber(redis.call('HGET', prefix .. 'job:' .. head, 'run_at')) or now
      if now - since > max_wait and (oldest == nil or since < oldest[2]) then
        oldest = { t, since }
      end
    end
  end
  aged = oldest and oldest[1]
end

local function key_state(k, lim) return key_state_of(prefix, now, k, lim) end
local function allowance(st) return key_allowance(now, st) end

-- What an assignment carries of the job (the worker needs neither the tenant nor the scheduling
-- fields); fewer fields than HGETALL is less work for Redis. `id` first: every job has one.
-- The tenant and limit key are read after them, for the key's limit (and the worker gets the
-- limit key; the tenant goes along with inputs, whose keys are the tenant's).
local ASSIGN = { 'id', 'queue', 'tier', 'priority', 'payload', 'ctype', 'labels', 'attempt',
  'max_attempts', 'timeout', 'idem', 'created', 'run_at', 'token', 'seq', 'w', 'error', 'par',
  'inputs', 'tp' }
local READ = { unpack(ASSIGN) }
READ[#READ + 1] = 'qw'
READ[#READ + 1] = 'tenant'
READ[#READ + 1] = 'lk'
local out, deadlines = {}, {}
local touched = {} -- limit keys of the jobs looked at: limit, or false
local planned_any, looked = false, 0
while #out < n and looked < n + 500 do
  local take, planned = { 0, 0, 0, 0 }, 0
  for _ = 1, n - #out do
    local best, best_pass, jumped = nil, nil, false
    if aged and sizes[aged] > 0 then
      -- The aged pick: virtual time stays where it is, so the others lose no credit.
      best, best_pass, jumped, aged = aged, math.max(pass[aged], vt), true, nil
    else
      for t = 4, 1, -1 do
        if sizes[t] > 0 then
          local p = math.max(pass[t], vt)
          if best == nil or p < best_pass then best, best_pass = t, p end
        end
      end
    end
    if best == nil then break end
    sizes[best] = sizes[best] - 1
    take[best] = take[best] + 1
    if not jumped then vt = best_pass end
    pass[best] = best_pass + 1 / weights[best]
    planned = planned + 1
  end
  if planned == 0 then break end
  planned_any = true
  looked = looked + planned
  for t = 4, 1, -1 do
    if take[t] > 0 then
      local popped = redis.call('ZPOPMIN', prefix .. 'ready:' .. t, take[t])
      -- The place last leased per priority moves on (see submit.lua's fairness).
      local leased_to = {}
      for k = 2, #popped, 2 do
        local score = tonumber(popped[k])
        local priority = math.floor(score / 1099511627776)
        local spot = score - priority * 1099511627776
        if (leased_to[priority] or 0) < spot then leased_to[priority] = spot end
      end
      for priority, spot in pairs(leased_to) do
        local zkey = prefix .. 'fair:' .. t .. ':' .. priority
        -- Keys whose last place is not past the new mark would start right after it anyway:
        -- forget them (and the old mark), so the set holds only keys with jobs further back.
        if spot > (tonumber(redis.call('ZSCORE', zkey, '\0v')) or 0) then
          redis.call('ZREMRANGEBYSCORE', zkey, '-inf', spot)
          redis.call('ZADD', zkey, spot, '\0v')
        end
      end
      for k = 1, #popped, 2 do
        local id = popped[k]
        local jkey = prefix .. 'job:' .. id
        local v = redis.call('HMGET', jkey, unpack(READ))
        local lk = v[#READ]
        local go = v[1] ~= false
        if go and lk then
          local key = v[#READ - 1] .. '/' .. lk
          local lim = limit_of(lk)
          touched[key] = lim
          if lim then
            local st = key_state(key, lim)
            local allowed, at = allowance(st)
            if allowed <= 0 then
              -- Blocked: parked with its place, and its tier gets the turn back.
              go = false
              redis.call('ZADD', prefix .. 'kp:' .. key, popped[k + 1], id)
              pass[t] = pass[t] - 1 / weights[t]
              if at then key_timer(key, at) end
            else
              if lim.conc > 0 then
                st.run = st.run + 1
                redis.call('SADD', prefix .. 'kn:' .. key, id)
              end
              if lim.period > 0 then
                st.tat = st.tat + lim.period
                st.dirty = true
              end
            end
          end
        end
        if go then
          local h, f = {}, {}
          for i, name in ipairs(ASSIGN) do
            if v[i] then
              h[name] = v[i]
              f[#f + 1] = name
              f[#f + 1] = v[i]
            end
          end
          if lk then
            f[#f + 1] = 'lk'
            f[#f + 1] = lk
          end
          h.qw = v[#ASSIGN + 1]
          if h.inputs then
            f[#f + 1] = 'tenant'
            f[#f + 1] = v[#READ - 1]
          end
          local attempt, token, seq = tonumber(h.attempt) + 1, tonumber(h.token) + 1, tonumber(h.seq) + 1
          local timeout_at = now + tonumber(h.timeout)
          local deadline = math.min(now + ttl, timeout_at)
          local changed = { 'state', 'RUNNING', 'attempt', attempt, 'token', token, 'started', ARGV[2],
            'worker', worker, 'session', session, 'timeout_at', timeout_at, 'seq', seq }
          if attempt > 1 then
            -- A retry starts without the last attempt's progress.
            for _, v in ipairs({ 'pct', '0', 'stage', '', 'msg', '' }) do changed[#changed + 1] = v end
          end
          redis.call('HSET', jkey, unpack(changed))
          -- The reply is the job as it is now: later fields override earlier ones when decoded.
          for _, v in ipairs(changed) do f[#f + 1] = v end
          out[#out + 1] = f
          deadlines[#deadlines + 1] = deadline
          deadlines[#deadlines + 1] = id
          emit(id, seq, h, { kind = 'state', state = 'RUNNING', attempt = attempt, worker = worker, t = now })
        end
      end
    end
  end
end
-- The keys seen: their GCRA times, and their next parked jobs when they may lease more now
-- (else a rate-blocked key keeps its timer; a full one waits for a slot to free).
local unparked = 0
for key, st in pairs(KEY) do
  if st.dirty then
    redis.call('SET', prefix .. 'kr:' .. key, st.tat, 'PX', math.floor(st.tat - now + st.lim.period))
  end
end
for key, lim in pairs(touched) do
  if redis.call('EXISTS', prefix .. 'kp:' .. key) == 1 then
    if lim then
      local allowed, at = allowance(key_state(key, lim))
      if allowed > 0 then
        unparked = unparked + unpark(prefix, key, math.min(allowed, 100))
      elseif at then
        key_timer(key, at)
      end
    else
      -- No limit applies (any more): its parked jobs all go back.
      unparked = unparked + unpark(prefix, key, 100)
    end
  end
end
if #deadlines > 0 then redis.call('ZADD', leased, unpack(deadlines)) end
if planned_any then
  redis.call('HSET', stride_key, 'p1', pass[1], 'p2', pass[2], 'p3', pass[3], 'p4', pass[4], 'vt', vt)
end
if tat then
  local leased_now = #deadlines / 2
  if leased_now > 0 then
    redis.call('SET', prefix .. 'rate', tat + leased_now * period, 'PX', burst * period + period)
  end
  -- Spent what it had: the next lease fits one period after the budget allows.
  rate_next = tat + (leased_now + 1) * period - burst * period
  if rate_next <= now then rate_next = nil end
end

local more = unparked > 0 and 1 or 0
for t = 1, 4 do if sizes[t] > 0 then more = 1 end end
local left = more -- jobs still waiting, whether or not this replica may take more now
if full then more = 0 end
-- Promoted jobs this call did not take are news for the other replicas' workers.
WAKE.ready = WAKE.ready and more == 1
finish(prefix, now, retention)
if left == 0 then rate_next = nil end
-- The earliest lease deadline, so that a lease no replica renews any more (its replica died
-- with it) is reclaimed when it lapses, not at the next safety sweep.
return { next_look(next_due) or -1, more, first_score(leased) or -1, ENDED, unpack(out) }
