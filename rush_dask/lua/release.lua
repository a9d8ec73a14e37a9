-- release: drop one reference from each node (the client read or released
-- it); a finished or failed node that nothing needs any more is deleted.
--
-- KEYS: leases queue rqueues lqs worker_states failed wake
-- Families: task worker pq lq rq wake graph gdone fdone gc
-- ARGV: prefix, task keys...
-- Reply: the number of keys.
--@include "nodes"

for i = 2, #ARGV do decref(ARGV[i]) end
return #ARGV - 1
