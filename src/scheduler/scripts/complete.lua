-- complete: the running attempt succeeded with `result`. The same completion sent twice is OK;
-- a different result for a finished attempt is rejected.
-- KEYS[1] job hash
-- ARGV prefix id token result now retention keep worker
-- Returns {'OK'} | {'FAILED_PRECONDITION', message}
local prefix, id, token, result = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, retention, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local worker = ARGV[8]
local j = redis.call('HMGET', KEYS[1], 'state', 'token', 'result', 'worker')
if j[1] == 'SUCCEEDED' and tonumber(j[2]) == tonumber(token) and j[4] == worker then
  if j[3] == result then return { 'OK' } end
  return { 'FAILED_PRECONDITION', 'this attempt already completed with a different result' }
end
local rejected = check_lease(KEYS[1], token, worker)
if rejected then return rejected end
redis.call('ZREM', prefix .. 'leased', id)
redis.call('HDEL', KEYS[1], 'session', 'deadline')
redis.call('HSET', KEYS[1], 'state', 'SUCCEEDED', 'result', result, 'finished', now, 'pct', 100)
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
emit(prefix, id, { kind = 'state', state = 'SUCCEEDED', attempt = attempt, result = result, t = now }, keep)
retire(prefix, id, now, retention)
return { 'OK' }
