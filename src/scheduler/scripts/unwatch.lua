-- unwatch: a watch of an unfinished job closed; when it was the last one, the job's events stop
-- being published.
-- KEYS[1] job hash
-- ARGV (none)
-- Returns 1 if the count went down, 0 if the job has finished or is gone.
local state = redis.call('HGET', KEYS[1], 'state')
if not state or TERMINAL[state] then return 0 end
if tonumber(redis.call('HINCRBY', KEYS[1], 'w', -1)) < 0 then redis.call('HSET', KEYS[1], 'w', 0) end
return 1
