-- resolve: a dependency of a WAITING job ended. Each dependency counts once, however often it
-- is reported (the job's `pending` set). When the last one succeeded the job goes in line
-- (QUEUED, or SCHEDULED until its run_at); when one did not, the job ends FAILED (or CANCELLED,
-- as its `dfail` says).
-- KEYS[1] the waiting job's hash
-- ARGV prefix id dep dep_state now retention
-- Returns ENDED (see common.lua): the job's new state, if it changed.
local prefix, id, dep, dep_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, retention = ARGV[5], ARGV[6]
local j = load(KEYS[1], { 'state', 'seq', 'w', 'qw', 'idem', 'tenant', 'attempt', 'token', 'worker',
  'result', 'lk', 'after', 'tier', 'priority', 'rank', 'run_at', 'dfail' })
if not j or j.state ~= 'WAITING' then return ENDED end
local pending = prefix .. 'pending:' .. id
if redis.call('SREM', pending, dep) == 0 then return ENDED end
if dep_state == 'SUCCEEDED' then
  if redis.call('SCARD', pending) > 0 then return ENDED end
  local seq = tonumber(j.seq) + 1
  local run_at = tonumber(j.run_at)
  if run_at > tonumber(now) then
    redis.call('HSET', KEYS[1], 'state', 'SCHEDULED', 'seq', seq)
    redis.call('ZADD', prefix .. 'delayed', run_at, id)
    wake_at(run_at)
    emit(id, seq, j, { kind = 'state', state = 'SCHEDULED', run_at = run_at, t = tonumber(now) })
    for _, v in ipairs({ id, 'SCHEDULED', '', j.run_at, j.tier or '' }) do ENDED[#ENDED + 1] = v end
  else
    redis.call('HSET', KEYS[1], 'state', 'QUEUED', 'seq', seq)
    admit(prefix, id, j, ready_score(j.priority, j.rank))
    emit(id, seq, j, { kind = 'state', state = 'QUEUED', t = tonumber(now) })
    for _, v in ipairs({ id, 'QUEUED', '', '', j.tier or '' }) do ENDED[#ENDED + 1] = v end
  end
else
  redis.call('DEL', pending)
  local state = j.dfail == 'cancel' and 'CANCELLED' or 'FAILED'
  local err = 'dependency ' .. dep .. ' ended ' .. dep_state
  settle(prefix, id, j, state, now, retention, { 'error', err }, { error = err })
  for _, v in ipairs({ id, state, err, '', j.tier or '' }) do ENDED[#ENDED + 1] = v end
end
finish(prefix, now, retention)
return ENDED
