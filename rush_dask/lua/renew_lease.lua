-- renew_lease: a client that follows its compute renews the graph's lease.
--
-- KEYS: leases
-- Families: graph
-- ARGV: prefix, graph_id, lease_seconds
-- Reply: 1, or 0 if the graph is gone or being reaped (the compute was cancelled meanwhile).
--@include "util"

local gk = p .. 'graph:' .. ARGV[2]
if redis.call('EXISTS', gk) == 0 or redis.call('HEXISTS', gk, 'reaped') == 1 then return 0 end
redis.call('ZADD', K.leases, 'XX', tonumber(now()) + tonumber(ARGV[3]), ARGV[2])
return 1
