-- list: one page of a tenant's jobs in a queue, newest first, optionally in one state. Scans at
-- most `budget` entries per call so a sparse filter cannot block Redis; drops ids whose job
-- expired (the only write it makes).
-- KEYS[1] the queue's all-jobs set (score = submission rank)
-- ARGV prefix tenant state('' = any) cursor('+inf' or a rank, exclusive) limit budget
-- Returns {next_cursor or '', {field value... without payload}...}
local prefix, tenant, state = ARGV[1], ARGV[2], ARGV[3]
local cursor, limit, budget = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if cursor ~= '+inf' then cursor = '(' .. cursor end
local entries = redis.call('ZREVRANGEBYSCORE', KEYS[1], cursor, '-inf', 'WITHSCORES', 'LIMIT', 0, budget)
local out, next_cursor = {}, ''
for i = 1, #entries, 2 do
  local id, rank = entries[i], entries[i + 1]
  local fields = redis.call('HGETALL', prefix .. 'job:' .. id)
  if #fields == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    local job, job_tenant, job_state = {}, nil, nil
    for f = 1, #fields, 2 do
      local k = fields[f]
      if k == 'tenant' then job_tenant = fields[f + 1] end
      if k == 'state' then job_state = fields[f + 1] end
      if k ~= 'payload' then
        table.insert(job, k)
        table.insert(job, fields[f + 1])
      end
    end
    if job_tenant == tenant and (state == '' or state == job_state) then
      table.insert(out, job)
    end
  end
  next_cursor = rank
  if #out >= limit then break end
end
if #out < limit and #entries < budget * 2 then next_cursor = '' end
return { next_cursor, unpack(out) }
