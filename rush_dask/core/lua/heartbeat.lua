-- heartbeat: refresh a worker's heartbeat, unless its state is no longer
-- 'running' (a worker declared lost must not come back to life).
-- Each beat of a running worker also reaps part of an abandoned compute and
-- of a client whose lease expired, and takes the result files to delete on
-- its host (an idle worker's garbage).
--
-- KEYS: worker_states queue rqueues lqs running failed leases wake clients
-- Families: task worker hb held pq lq rq wake graph gdone fdone gc crefs creq
-- ARGV: prefix, worker_id, heartbeat_expire_ms, reap_batch, host
-- Reply: {state, terminate ('1' or '0'), garbage (paths)}.
--@include "clients"

local wid = ARGV[2]
local state = redis.call('HGET', K.worker_states, wid)
if state ~= 'running' then return {state or 'unknown', '0', {}} end
redis.call('SET', p .. 'hb:' .. wid, '1', 'PX', ARGV[3])
reap_abandoned_graph(tonumber(now()), tonumber(ARGV[4] or '0'))
reap_expired_client(tonumber(now()), tonumber(ARGV[4] or '0'))
return {'running', redis.call('HGET', p .. 'worker:' .. wid, 'terminate') or '0', take_garbage(ARGV[5])}
