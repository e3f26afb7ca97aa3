-- peek: what the history keeps of some jobs of one queue, as Redis has them now; the
-- reconciler's repair compares it with rows that stopped changing. Reads only.
-- KEYS[1] the queue's all-jobs index (routing only)
-- ARGV prefix id...
-- Returns per id: {} when Redis does not have the job, else
--   {state, attempt, worker, started, finished, run_at, result, error, arts}
local FIELDS = { 'state', 'attempt', 'worker', 'started', 'finished', 'run_at', 'result', 'error',
  'arts' }
local out = {}
for i = 2, #ARGV do
  local v = redis.call('HMGET', ARGV[1] .. 'job:' .. ARGV[i], unpack(FIELDS))
  if v[1] then
    for k = 1, #FIELDS do v[k] = v[k] or '' end
    out[#out + 1] = v
  else
    out[#out + 1] = {}
  end
end
return out
