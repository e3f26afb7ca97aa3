-- complete: running attempts succeeded, a batch of them from one worker. The same completion
-- sent twice is OK; a different result for a finished attempt is refused.
-- KEYS[1] the queue's leased set
-- ARGV prefix now retention worker, then (id token result artifacts) per report; artifacts is
-- the JSON list of the attempt's files, or empty
-- Returns one {code, message} per report: {'OK', '', tier (only when this call applied it)} |
--   {'FAILED_PRECONDITION', message}
local prefix, now, retention, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for i = 5, #ARGV, 4 do
  local id, token, result, arts = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local j = load(prefix .. 'job:' .. id, SETTLE_FIELDS)
  local reply = { 'OK', '' }
  if j and j.state == 'SUCCEEDED' and holds(j, token) and j.worker == worker then
    if j.result ~= result then
      reply = { 'FAILED_PRECONDITION', 'this attempt already completed with a different result' }
    end
  else
    local rejected = check_lease(prefix, id, j, token, worker)
    if rejected then
      reply = rejected
    else
      local fields = { 'result', result, 'pct', '100' }
      local ev = { result = result }
      if arts ~= '' then
        fields[#fields + 1], fields[#fields + 2] = 'arts', arts
        ev.arts = arts
      end
      settle(prefix, id, j, 'SUCCEEDED', now, retention, fields, ev)
      reply[3] = j.tier
    end
  end
  out[#out + 1] = reply
end
finish(prefix, now, retention)
return out
