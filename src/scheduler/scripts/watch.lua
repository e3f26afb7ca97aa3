-- watch: a watch opens on a job. From now on the job's events are published; the reply is the
-- job as it is now, the watch's snapshot.
-- KEYS[1] job hash
-- ARGV tenant
-- Returns {'OK', HGETALL...} | {'NOT_FOUND'}
local j = redis.call('HMGET', KEYS[1], 'tenant', 'state')
if not j[1] or j[1] ~= ARGV[1] then return { 'NOT_FOUND' } end
if not TERMINAL[j[2]] then redis.call('HINCRBY', KEYS[1], 'w', 1) end
return { 'OK', redis.call('HGETALL', KEYS[1]) }
