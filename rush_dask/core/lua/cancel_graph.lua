-- cancel_graph: delete every node of a graph still there, take them off the
-- queues and off the workers (their late results are dropped), and give back
-- the references they held on results of earlier graphs.
--
-- KEYS: leases queue rqueues lqs running worker_states failed wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc
-- ARGV: prefix, graph_id, task keys...
-- Reply: 1.
--@include "reap"

local gid = ARGV[2]
for i = 3, #ARGV do cancel_node(ARGV[i], gid) end
forget_graph(gid)
return 1
