-- fail: the running attempt failed. Retryable failures go back after a backoff while attempts
-- remain; others end FAILED. The same failure sent twice is OK.
-- KEYS[1] job hash
-- ARGV prefix id token error retryable(0|1) now jitter retention keep worker
-- Returns {'OK', new_state} | {'FAILED_PRECONDITION', message}
local prefix, id, token, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, jitter, retention, keep = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local worker = ARGV[10]
local j = redis.call('HMGET', KEYS[1], 'state', 'token', 'error', 'worker')
if j[1] and j[1] ~= 'RUNNING' and tonumber(j[2]) == tonumber(token) and j[3] == err and j[4] == worker then
  return { 'OK', j[1] }
end
local rejected = check_lease(KEYS[1], token, worker)
if rejected then return rejected end
if ARGV[5] == '1' then
  return { 'OK', retry_or_fail(prefix, id, now, jitter, err, retention, keep, false) }
end
redis.call('ZREM', prefix .. 'leased', id)
redis.call('HDEL', KEYS[1], 'session', 'deadline')
redis.call('HSET', KEYS[1], 'state', 'FAILED', 'error', err, 'finished', now)
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
emit(prefix, id, { kind = 'state', state = 'FAILED', attempt = attempt, error = err, t = now }, keep)
retire(prefix, id, now, retention)
return { 'OK', 'FAILED' }
