-- progress: records the running attempt's progress and tells the watchers.
-- KEYS[1] job hash
-- ARGV prefix id token percent stage message now keep worker
-- Returns {'OK'} | {'FAILED_PRECONDITION', message}
local prefix, id, token = ARGV[1], ARGV[2], ARGV[3]
local rejected = check_lease(KEYS[1], token, ARGV[9])
if rejected then return rejected end
redis.call('HSET', KEYS[1], 'pct', ARGV[4], 'stage', ARGV[5], 'msg', ARGV[6])
emit(prefix, id, { kind = 'progress', pct = tonumber(ARGV[4]), stage = ARGV[5], msg = ARGV[6],
  t = tonumber(ARGV[7]) }, tonumber(ARGV[8]))
return { 'OK' }
