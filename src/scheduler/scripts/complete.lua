-- complete: running attempts succeeded, a batch of them from one worker. The same completion
-- sent twice is OK; a different result for a finished attempt is refused.
-- KEYS[1] the queue's leased set
-- ARGV prefix now retention worker, then (id token result) per report
-- Returns one {code, message} per report: {'OK', ''} | {'FAILED_PRECONDITION', message}
local prefix, now, retention, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for i = 5, #ARGV, 3 do
  local id, token, result = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local j = load(prefix .. 'job:' .. id, SETTLE_FIELDS)
  local reply = { 'OK', '' }
  if j and j.state == 'SUCCEEDED' and tonumber(j.token) == tonumber(token) and j.worker == worker then
    if j.result ~= result then
      reply = { 'FAILED_PRECONDITION', 'this attempt already completed with a different result' }
    end
  else
    local rejected = check_lease(j, token, worker)
    if rejected then
      reply = { 'FAILED_PRECONDITION', rejected }
    else
      settle(prefix, id, j, 'SUCCEEDED', now, retention, { 'result', result, 'pct', '100' },
        { result = result })
    end
  end
  out[#out + 1] = reply
end
finish(prefix, now, retention)
return out
