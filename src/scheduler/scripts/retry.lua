-- retry: a FAILED job (a dead letter) goes back to QUEUED with a fresh budget of attempts. Its
-- attempt numbers go on (the history keeps every attempt), and it may now run as many more
-- times as it first could (`budget`, the max_attempts it was submitted with).
-- KEYS[1] job hash
-- ARGV prefix id tenant now
-- Returns {'OK', HGETALL...} | {'NOT_FOUND'} | {'FAILED_PRECONDITION', message}
local prefix, id, tenant, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local j = load(KEYS[1], { 'state', 'tenant', 'attempt', 'max_attempts', 'budget', 'tier',
  'priority', 'rank', 'seq', 'idem', 'w', 'qw', 'lk' })
if not j or j.tenant ~= tenant then return { 'NOT_FOUND' } end
if j.state ~= 'FAILED' then
  return { 'FAILED_PRECONDITION', 'job is ' .. j.state .. '; only a FAILED job can be retried' }
end
local budget = tonumber(j.budget) or tonumber(j.max_attempts)
local seq = tonumber(j.seq) + 1
redis.call('HSET', KEYS[1], 'state', 'QUEUED', 'max_attempts', tonumber(j.attempt) + budget,
  'budget', budget, 'seq', seq, 'result', '')
redis.call('HDEL', KEYS[1], 'finished')
-- It no longer expires, and neither does its idempotency key.
redis.call('PERSIST', KEYS[1])
if j.idem and j.idem ~= '' then redis.call('PERSIST', prefix .. 'idem:' .. tenant .. ':' .. j.idem) end
redis.call('ZREM', prefix .. 'expiring', id)
admit(prefix, id, j, ready_score(j.priority, j.rank))
if j.qw ~= '1' and queue_watched(prefix) then
  redis.call('HSET', KEYS[1], 'qw', '1')
  j.qw = '1'
end
emit(id, seq, j, { kind = 'state', state = 'QUEUED', attempt = tonumber(j.attempt), t = tonumber(now) })
finish(prefix, now, 0)
return { 'OK', redis.call('HGETALL', KEYS[1]) }
