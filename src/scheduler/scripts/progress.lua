-- progress: records the running attempts' progress (the latest per job of a batch from one
-- worker) and tells the watchers.
-- KEYS[1] the queue's leased set
-- ARGV prefix now worker, then (id token percent stage message) per report
-- Returns one {code, message} per report: {'OK', ''} | {'FAILED_PRECONDITION', message}
local prefix, now, worker = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local READ = { 'state', 'token', 'worker', 'seq', 'w', 'qw', 'adopt', 'atok' }
local out = {}
for i = 4, #ARGV, 5 do
  local id, token = ARGV[i], ARGV[i + 1]
  local jkey = prefix .. 'job:' .. id
  local j = load(jkey, READ)
  local rejected = check_lease(prefix, id, j, token, worker)
  if rejected then
    out[#out + 1] = rejected
  else
    local seq = tonumber(j.seq) + 1
    redis.call('HSET', jkey, 'pct', ARGV[i + 2], 'stage', ARGV[i + 3], 'msg', ARGV[i + 4], 'seq', seq)
    emit(id, seq, j, { kind = 'progress', pct = tonumber(ARGV[i + 2]), stage = ARGV[i + 3],
      msg = ARGV[i + 4], t = now })
    out[#out + 1] = { 'OK', '' }
  end
end
finish(prefix, now, 0)
return out
