-- follow: a WatchJobs stream reads one page of a queue's jobs. The queue is marked watched for
-- `ttl` ms (replicas serving such streams refresh it), so jobs submitted from now on announce
-- themselves; every unfinished job of the tenant on the page is marked `qw`, so its events are
-- published from now on. The reply is what the stream's snapshot needs: the tenant's unfinished
-- jobs, and those that finished at or after `since` (a resuming client may have missed their
-- end), without payloads.
-- KEYS[1] the queue's all-jobs index
-- ARGV prefix tenant since(ms, or '' for none) from (ZRANGE's lower bound: '-inf', or '(' and
--   the last rank of the page before) count ttl(ms)
-- Returns {next (the last rank read, or '' at the end), {job fields...}...}
local prefix, tenant, since, from = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local count = tonumber(ARGV[5])
redis.call('SET', prefix .. 'watched', '1', 'PX', ARGV[6])
local page = redis.call('ZRANGE', KEYS[1], from, '+inf', 'BYSCORE', 'LIMIT', 0, count,
  'WITHSCORES')
local out = {}
for k = 1, #page, 2 do
  local jkey = prefix .. 'job:' .. page[k]
  local v = redis.call('HMGET', jkey, 'tenant', 'state', 'finished', 'qw')
  if v[1] == tenant then
    local unfinished = not TERMINAL[v[2]]
    if unfinished and v[4] ~= '1' then redis.call('HSET', jkey, 'qw', '1') end
    if unfinished or (since and tonumber(v[3] or 0) >= since) then
      local all, job = redis.call('HGETALL', jkey), {}
      for f = 1, #all, 2 do
        if all[f] ~= 'payload' then
          job[#job + 1] = all[f]
          job[#job + 1] = all[f + 1]
        end
      end
      out[#out + 1] = job
    end
  end
end
local next = ''
if #page == 2 * count then next = page[#page] end
return { next, out }
