-- renew_client: a controller renews its lease, which covers everything it
-- holds (persisted results, futures). Every controller calls it now and then,
-- so it also does the sweeping that nobody else may be there to do: it reaps
-- part of a client whose lease expired, and part of an abandoned compute.
--
-- KEYS: clients leases queue rqueues lqs running worker_states failed wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc crefs creq
-- ARGV: prefix, client_id, lease_seconds (0: the client leaves, dropping what
--       it holds), reap_batch
-- Reply: 1 if the lease was renewed; 0 if it had expired (what the client held
-- is gone now); -1 if the client had no lease (new, or reaped by another call).
--@include "clients"

local t = tonumber(now())
local cid = ARGV[2]
local expiry = redis.call('ZSCORE', K.clients, cid)
if tonumber(ARGV[3]) <= 0 then
  if expiry then while not reap_client(cid, 1000) do end end
  return 1
end
local reply = 1
if not expiry then
  reply = -1
elseif tonumber(expiry) < t then
  while not reap_client(cid, 1000) do end  -- in full: it learns from this reply that all is gone
  reply = 0
end
redis.call('ZADD', K.clients, t + tonumber(ARGV[3]), cid)
reap_expired_client(t, tonumber(ARGV[4]))
reap_abandoned_graph(t, tonumber(ARGV[4]))
return reply
