-- submit: creates a job, QUEUED now or SCHEDULED for later; dedups by idempotency key.
-- KEYS[1] job hash (its `{queue}` tag routes the call; the other keys share the tag)
-- ARGV prefix id tenant tier priority payload ctype labels max_attempts backoff_initial
--      backoff_max timeout idem now run_at keep
-- Returns {'CREATED', HGETALL...} | {'EXISTS', HGETALL...} | {'ALREADY_EXISTS', message}
local prefix, id, tenant = ARGV[1], ARGV[2], ARGV[3]
local idem, now, run_at, keep = ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local jkey = KEYS[1]

if idem ~= '' then
  local ikey = prefix .. 'idem:' .. tenant .. ':' .. idem
  local first = redis.call('GET', ikey)
  if first then
    local fkey = prefix .. 'job:' .. first
    local payload = redis.call('HGET', fkey, 'payload')
    if payload then
      if payload ~= ARGV[6] then
        return { 'ALREADY_EXISTS', 'idempotency key "' .. idem .. '" was already used by job ' .. first ..
          ' with a different payload' }
      end
      return { 'EXISTS', redis.call('HGETALL', fkey) }
    end
  end
  redis.call('SET', ikey, id)
end

local rank = redis.call('INCR', prefix .. 'seq')
local queue = string.sub(prefix, 5, -3) -- the prefix is 'cv:{' .. queue .. '}:'
local state = 'QUEUED'
if run_at > now then state = 'SCHEDULED' else run_at = now end
redis.call('HSET', jkey, 'id', id, 'queue', queue, 'tenant', tenant, 'tier', ARGV[4],
  'priority', ARGV[5], 'state', state, 'payload', ARGV[6], 'ctype', ARGV[7], 'labels', ARGV[8],
  'attempt', 0, 'max_attempts', ARGV[9], 'backoff_initial', ARGV[10], 'backoff_max', ARGV[11],
  'timeout', ARGV[12], 'idem', idem, 'created', now, 'run_at', run_at, 'token', 0, 'seq', 0,
  'rank', rank)
redis.call('SET', 'cv:id:' .. id, queue)
redis.call('ZADD', prefix .. 'all', rank, id)
if state == 'QUEUED' then
  enqueue(prefix, id, ARGV[4], ARGV[5], rank)
  redis.call('PUBLISH', 'cv:wake', queue)
else
  redis.call('ZADD', prefix .. 'delayed', run_at, id)
  redis.call('PUBLISH', 'cv:wake', queue .. '|' .. run_at)
end
emit(prefix, id, { kind = 'state', state = state, attempt = 0, t = now }, keep)
return { 'CREATED', redis.call('HGETALL', jkey) }
