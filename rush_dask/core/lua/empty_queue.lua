-- empty_queue: fail every queued task (shared queue, queues of resources,
-- workers' own and local queues).
--
-- KEYS: queue worker_states rqueues lqs failed leases wake
-- Families: task worker pq lq rq wake graph gdone fdone gc
-- ARGV: prefix, reason
-- Reply: the number of tasks failed.
--@include "nodes"

local reason = ARGV[2]
local t = now()
local keys = redis.call('ZRANGE', K.queue, 0, -1)
redis.call('DEL', K.queue)
for _, wid in ipairs(redis.call('HKEYS', K.worker_states)) do
  for _, key in ipairs(redis.call('LRANGE', p .. 'pq:' .. wid, 0, -1)) do keys[#keys + 1] = key end
  redis.call('DEL', p .. 'pq:' .. wid)
end
for _, spec in ipairs(redis.call('SMEMBERS', K.rqueues)) do
  for _, key in ipairs(redis.call('ZRANGE', p .. 'rq:' .. spec, 0, -1)) do keys[#keys + 1] = key end
  redis.call('DEL', p .. 'rq:' .. spec)
end
for _, wid in ipairs(redis.call('SMEMBERS', K.lqs)) do
  for _, key in ipairs(redis.call('ZRANGE', p .. 'lq:' .. wid, 0, -1)) do keys[#keys + 1] = key end
  redis.call('DEL', p .. 'lq:' .. wid)
end
redis.call('DEL', K.lqs)
for _, key in ipairs(keys) do fail(key, reason, t) end
return #keys
