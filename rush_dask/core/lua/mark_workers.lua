-- mark_workers: declare running workers 'lost' or 'killed' and deal with the
-- tasks they held: a lost worker's tasks are requeued until a task has been
-- lost max_lost times (then failed); a killed worker's tasks are failed.
-- With scan = '1', every running worker whose heartbeat key expired is
-- declared too.
--
-- KEYS: worker_states queue rqueues lqs running failed leases wake
-- Families: task worker hb held pq lq rq wake graph gdone fdone gc
-- ARGV: prefix, new_state ('lost' or 'killed'), reason, scan ('1' or '0'), worker_ids...
-- Reply: the ids of the workers whose state changed.
--@include "nodes"

local new_state, reason, scan = ARGV[2], ARGV[3], ARGV[4]
local candidates = {}
for i = 5, #ARGV do candidates[#candidates + 1] = ARGV[i] end
if scan == '1' then
  local states = redis.call('HGETALL', K.worker_states)
  for i = 1, #states, 2 do
    if states[i + 1] == 'running' and redis.call('EXISTS', p .. 'hb:' .. states[i]) == 0 then
      candidates[#candidates + 1] = states[i]
    end
  end
end
local t = now()
local changed = {}
for _, wid in ipairs(candidates) do
  if redis.call('HGET', K.worker_states, wid) == 'running' then
    redis.call('HSET', K.worker_states, wid, new_state)
    redis.call('HSET', p .. 'worker:' .. wid, 'stopped_at', t)
    redis.call('DEL', p .. 'hb:' .. wid)
    for _, key in ipairs(redis.call('SMEMBERS', p .. 'held:' .. wid)) do
      local tk = p .. 'task:' .. key
      local f = redis.call('HMGET', tk, 'state', 'worker_id', 'own', 'max_lost')
      if f[1] == 'running' and f[2] == wid then
        redis.call('SREM', K.running, key)
        local n_lost = redis.call('HINCRBY', tk, 'n_lost', 1)
        if new_state == 'lost' and f[3] ~= '1' and n_lost <= tonumber(f[4] or '0') then
          requeue(key)
        else
          fail(key, reason .. ' (worker ' .. wid .. ', attempt ' ..
               (redis.call('HGET', tk, 'attempts') or '?') .. ')', t)
        end
      end
    end
    redis.call('DEL', p .. 'held:' .. wid)
    release_priority_queue(wid)
    changed[#changed + 1] = wid
  end
end
return changed
