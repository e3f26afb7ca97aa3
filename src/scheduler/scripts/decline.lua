-- decline: assignments a worker handed back without running them (it is stopping, or cannot
-- start its command), a batch of them from one worker. Each job goes back to its place in line
-- as if it had not been leased: its attempt does not count. The same decline sent twice is OK.
-- KEYS[1] the queue's leased set
-- ARGV prefix now retention worker, then (id token reason) per report
-- Returns one answer per report: {'OK', 'QUEUED', attempt (the count it is back at), tier (only
--   when this call applied it)}
--   | {'FAILED_PRECONDITION', message}
local prefix, now, retention, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
for i = 5, #ARGV, 3 do
  local id, token, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local j = load(prefix .. 'job:' .. id)
  if j and j.state == 'QUEUED' and holds(j, token) and j.worker == worker then
    out[#out + 1] = { 'OK', 'QUEUED', j.attempt }
  else
    local rejected = check_lease(prefix, id, j, token, worker)
    if rejected then
      out[#out + 1] = rejected
    else
      local attempt = unlease(prefix, id, j, now)
      out[#out + 1] = { 'OK', 'QUEUED', tostring(attempt), j.tier }
    end
  end
end
finish(prefix, now, retention)
return out
