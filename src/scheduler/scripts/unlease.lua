-- unlease: a lease call that went without an answer (Redis stalled past the client's timeout)
-- may still have leased jobs to a session that never heard of them. Each running job of that
-- session that its dispatcher does not hold goes back to its place, its attempt not counted:
-- it never reached a worker. The dispatcher makes no other lease call for the queue meanwhile.
-- Rare, so it walks the queue's leased set rather than costing every lease a record.
-- KEYS[1] the queue's leased set
-- ARGV prefix now retention session, then the ids the session holds in the queue
-- Returns {id, attempt it is back at} per job put back.
local prefix, now, retention, session = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local held = {}
for i = 5, #ARGV do held[ARGV[i]] = true end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not held[id] then
    local j = load(prefix .. 'job:' .. id)
    if j and j.state == 'RUNNING' and j.session == session then
      out[#out + 1] = { id, tostring(unlease(prefix, id, j, now)) }
    end
  end
end
finish(prefix, now, retention)
return out
