-- hold: a client takes one reference on each node (a future it received from
-- another client, by key), recorded under its lease. Applies once per request id.
--
-- KEYS: clients leases queue rqueues lqs running worker_states failed wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc crefs creq
-- ARGV: prefix, client_id, request_id, lease_seconds, task keys...
-- Reply: the task keys that are gone (released, or never existed): nothing is held on them.
--@include "clients"

local t = now()
local cid, rid = ARGV[2], ARGV[3]
local missing = {}
if not first_time(cid, rid, t) then return missing end
ensure_client(cid, t, tonumber(ARGV[4]))
for i = 5, #ARGV do
  local tk = p .. 'task:' .. ARGV[i]
  if redis.call('EXISTS', tk) == 1 then
    redis.call('HINCRBY', tk, 'refs', 1)
    count_ref(cid, ARGV[i], 1)
  else
    missing[#missing + 1] = ARGV[i]
  end
end
return missing
