-- push_running: the decentralized mode; a worker creates tasks that it runs
-- itself (state running at once, held by it, never retried).
--
-- KEYS: worker_states seq tasks running
-- Families: task held
-- ARGV: prefix, worker_id, n, then n times: key, xs, extra
-- Reply: the sequence number before the batch; an error if the worker is not running.
--@include "util"

local wid = ARGV[2]
if redis.call('HGET', K.worker_states, wid) ~= 'running' then
  return redis.error_reply('worker ' .. wid .. ' is not running')
end
local n = tonumber(ARGV[3])
local base = redis.call('INCRBY', K.seq, n) - n
local t = now()
for i = 0, n - 1 do
  local j = 4 + 3 * i
  local key, xs, extra = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local tk = p .. 'task:' .. key
  local seq = base + i + 1
  redis.call('HSET', tk, 'xs', xs, 'state', 'running', 'seq', seq, 'score', seq,
             'queued_at', t, 'started_at', t, 'worker_id', wid, 'attempts', 1,
             'max_retries', 0, 'max_lost', 0, 'own', 1)
  if extra ~= '' then redis.call('HSET', tk, 'extra', extra) end
  redis.call('RPUSH', K.tasks, key)
  redis.call('SADD', K.running, key)
  redis.call('SADD', p .. 'held:' .. wid, key)
end
return base
