-- release: drop one reference from each node (its client read it, or let go
-- of its future). A node that nothing needs any more goes: deleted when done,
-- cancelled when not (see release_node). With a client id, the reference was
-- recorded under the client's lease and is forgotten there too; the call then
-- applies once per request id (a repeat after a lost reply changes nothing).
--
-- KEYS: clients leases queue rqueues lqs running worker_states failed wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc crefs creq
-- ARGV: prefix, client_id ('' for references no lease records), request_id, task keys...
-- Reply: the number of keys released (0 for a repeated request).
--@include "clients"

local cid, rid = ARGV[2], ARGV[3]
-- A client with no lease any more (reaped, or the network was reset) has nothing recorded.
local recorded = cid ~= '' and redis.call('ZSCORE', K.clients, cid)
if recorded and not first_time(cid, rid, now()) then return 0 end
for i = 4, #ARGV do
  if recorded then count_ref(cid, ARGV[i], -1) end
  release_node(ARGV[i])
end
return #ARGV - 3
