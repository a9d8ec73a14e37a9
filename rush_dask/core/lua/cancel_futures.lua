-- cancel_futures: each node not done yet fails with `reason`, and so does what
-- depends on it; a running one is taken off its worker (its late result is
-- dropped).
--
-- KEYS: running queue rqueues lqs worker_states failed leases wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc
-- ARGV: prefix, reason, task keys...
-- Reply: how many were cancelled.
--@include "nodes"

local t = now()
local n = 0
for i = 3, #ARGV do
  local key = ARGV[i]
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'state', 'worker_id')
  if f[1] and f[1] ~= 'finished' and f[1] ~= 'failed' then
    if f[1] == 'running' then
      redis.call('SREM', K.running, key)
      if f[2] then redis.call('SREM', p .. 'held:' .. f[2], key) end
    end
    redis.call('HSET', tk, 'error', ARGV[2])
    fail_graph_node(key, t)
    n = n + 1
  end
end
return n
