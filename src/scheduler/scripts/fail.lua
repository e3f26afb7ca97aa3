-- fail: running attempts failed, a batch of them from one worker. Retryable failures go back
-- after a backoff while attempts remain; others end FAILED. The same failure sent twice is OK.
-- KEYS[1] the queue's leased set
-- ARGV prefix now retention worker, then (id token error retryable(0|1) jitter) per report
-- Returns one answer per report: {'OK', new state, run_at or '', tier (only when this call
--   applied it)} | {'FAILED_PRECONDITION', message}
local prefix, now, retention, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out = {}
for i = 5, #ARGV, 5 do
  local id, token, err, retryable, jitter = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local j = load(prefix .. 'job:' .. id)
  if j and j.state ~= 'RUNNING' and holds(j, token) and j.error == err
    and j.worker == worker then
    out[#out + 1] = { 'OK', j.state, '' }
  else
    local rejected = check_lease(prefix, id, j, token, worker)
    if rejected then
      out[#out + 1] = rejected
    elseif retryable == '1' then
      local state, due = retry_or_fail(prefix, id, j, now, jitter, err, retention, false)
      out[#out + 1] = { 'OK', state, due and tostring(due) or '', j.tier }
    else
      settle(prefix, id, j, 'FAILED', now, retention, { 'error', err }, { error = err })
      out[#out + 1] = { 'OK', 'FAILED', '', j.tier }
    end
  end
end
finish(prefix, now, retention)
return out
