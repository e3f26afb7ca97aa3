-- pause: stops or restarts leasing from a queue. While paused, lease.lua still reclaims expired
-- leases and promotes due jobs, but leases nothing; resuming wakes the queue's workers.
-- KEYS[1] the queue's paused flag
-- ARGV prefix paused(1|0)
-- Returns 1 when the flag changed, 0 when it already was so.
local prefix, paused = ARGV[1], ARGV[2] == '1'
if paused then
  return redis.call('SET', KEYS[1], '1', 'NX') and 1 or 0
end
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
WAKE.ready = true
finish(prefix, 0, 0)
return 1
