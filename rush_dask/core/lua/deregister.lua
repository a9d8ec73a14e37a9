-- deregister: a worker stops gracefully. State 'terminated', its own and
-- local queues go to the shared queue, tasks it still holds are requeued (or
-- failed, for tasks it created itself).
--
-- KEYS: worker_states queue rqueues lqs running failed leases wake
-- Families: task worker hb held pq lq rq wake graph gdone fdone gc
-- ARGV: prefix, worker_id
-- Reply: the worker's state after the call.
--@include "nodes"

local wid = ARGV[2]
local state = redis.call('HGET', K.worker_states, wid)
if state ~= 'running' then return state end
local t = now()
redis.call('HSET', K.worker_states, wid, 'terminated')
redis.call('HSET', p .. 'worker:' .. wid, 'stopped_at', t)
redis.call('DEL', p .. 'hb:' .. wid)
for _, key in ipairs(redis.call('SMEMBERS', p .. 'held:' .. wid)) do
  redis.call('SREM', K.running, key)
  if redis.call('HGET', p .. 'task:' .. key, 'own') == '1' then
    fail(key, 'worker ' .. wid .. ' stopped before finishing its own task', t)
  else
    requeue(key)
  end
end
redis.call('DEL', p .. 'held:' .. wid)
release_priority_queue(wid)
return 'terminated'
