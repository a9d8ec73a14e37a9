-- settle_on_client: record the outcomes of graph nodes that their client ran
-- itself (nodes that must stay in the client process: see rush_dask.dask.clientnodes).
-- Such a node is queued on a resource queue that no worker pops
-- ('@client:<graph>=1'); the client takes it off that queue, runs it, and
-- settles it here as a worker would: result stored (or held on the client's
-- host), inputs released, dependents queued, its client told; an error is
-- retried (queued again for the client) or fails the node and its dependents.
-- A node that is no longer queued (its graph was cancelled meanwhile) is dropped.
--
-- KEYS: worker_states queue rqueues lqs running archive finished failed leases wake
-- Families: task worker held pq lq rq graph gdone fdone gc wake
-- ARGV: prefix, holder (the client's id, under which results held on its host
--       are recorded), n, then n times: key, outcome ('finished'|'held'|'error'),
--       payload, traceback, exception
-- Reply: one note per outcome (finished, retried, failed or dropped).
--@include "settle"

local wid, n = ARGV[2], tonumber(ARGV[3])
local t = now()
local notes = {}
for i = 0, n - 1 do
  local j = 4 + 5 * i
  local key = ARGV[j]
  local tk = p .. 'task:' .. key
  if redis.call('HGET', tk, 'state') == 'queued' then
    dequeue(key)
    redis.call('HSET', tk, 'state', 'running', 'worker_id', wid, 'started_at', t)
    notes[i + 1] = settle(wid, key, ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4], t)
  else
    notes[i + 1] = 'dropped'
  end
end
return notes
