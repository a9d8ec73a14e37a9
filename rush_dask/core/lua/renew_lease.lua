-- renew_lease: a client that follows its compute renews the graph's lease.
-- Like every renewal, it also sweeps a little: part of a client whose lease
-- expired and part of an abandoned compute, so that nothing waits for a worker.
--
-- KEYS: leases clients queue rqueues lqs running worker_states failed wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc crefs creq
-- ARGV: prefix, graph_id, lease_seconds
-- Reply: 1, or 0 if the graph is gone or being reaped (the compute was cancelled meanwhile).
--@include "clients"

local t = tonumber(now())
local gk = p .. 'graph:' .. ARGV[2]
if redis.call('EXISTS', gk) == 0 or redis.call('HEXISTS', gk, 'reaped') == 1 then return 0 end
redis.call('ZADD', K.leases, 'XX', t + tonumber(ARGV[3]), ARGV[2])
reap_expired_client(t, 1000)
reap_abandoned_graph(t, 1000)
return 1
