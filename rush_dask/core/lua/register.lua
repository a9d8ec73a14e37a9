-- register: a new worker joins the network (state running, its fields, a
-- first heartbeat).
--
-- KEYS: worker_states
-- Families: worker hb
-- ARGV: prefix, worker_id, heartbeat_expire_ms, then field, value pairs
-- Reply: 1, or 0 if the worker id is taken.
--@include "util"

local wid = ARGV[2]
if redis.call('HEXISTS', K.worker_states, wid) == 1 then return 0 end
redis.call('HSET', K.worker_states, wid, 'running')
redis.call('HSET', p .. 'worker:' .. wid, 'started_at', now())
for i = 4, #ARGV, 2 do redis.call('HSET', p .. 'worker:' .. wid, ARGV[i], ARGV[i + 1]) end
redis.call('SET', p .. 'hb:' .. wid, '1', 'PX', ARGV[3])
return 1
