-- release: drop one reference from each node (its client read it, or let go
-- of its future). A node that nothing needs any more goes: deleted when done,
-- cancelled when not (see release_node). With a client id, the references
-- were recorded under the client's lease: only those still recorded there are
-- dropped (a client reaped while it was paused, whose references were dropped
-- for it, drops nothing twice), and the call applies once per request id (a
-- repeat after a lost reply changes nothing).
--
-- KEYS: clients leases queue rqueues lqs running worker_states failed wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc crefs creq
-- ARGV: prefix, client_id ('' for references no lease records), request_id, task keys...
-- Reply: the number of references dropped (0 for a repeated request).
--@include "clients"

local cid, rid = ARGV[2], ARGV[3]
if cid == '' then
  for i = 4, #ARGV do release_node(ARGV[i]) end
  return #ARGV - 3
end
-- A client with no lease any more (reaped, or the network was reset) has nothing recorded.
if not redis.call('ZSCORE', K.clients, cid) or not first_time(cid, rid, now()) then return 0 end
local n = 0
for i = 4, #ARGV do
  if count_ref(cid, ARGV[i], -1) >= 0 then
    release_node(ARGV[i])
    n = n + 1
  end
end
return n
