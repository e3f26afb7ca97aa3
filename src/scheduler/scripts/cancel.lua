-- cancel: ends a job that has not finished. Every replica sees the CANCELLED event, and the one
-- whose worker runs the job tells that worker to stop.
-- KEYS[1] job hash
-- ARGV prefix id tenant now retention keep
-- Returns {'OK', HGETALL...} | {'NOT_FOUND'} | {'FAILED_PRECONDITION', message}
local prefix, id, tenant = ARGV[1], ARGV[2], ARGV[3]
local now, retention, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local j = redis.call('HMGET', KEYS[1], 'state', 'tenant', 'tier', 'attempt')
if not j[1] or j[2] ~= tenant then return { 'NOT_FOUND' } end
if TERMINAL[j[1]] then
  return { 'FAILED_PRECONDITION', 'job already finished as ' .. j[1] .. '; nothing to cancel' }
end
redis.call('ZREM', prefix .. 'ready:' .. j[3], id)
redis.call('ZREM', prefix .. 'delayed', id)
redis.call('ZREM', prefix .. 'leased', id)
redis.call('HDEL', KEYS[1], 'session', 'deadline')
redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'finished', now)
emit(prefix, id, { kind = 'state', state = 'CANCELLED', attempt = tonumber(j[4]), t = now }, keep)
retire(prefix, id, now, retention)
return { 'OK', redis.call('HGETALL', KEYS[1]) }
