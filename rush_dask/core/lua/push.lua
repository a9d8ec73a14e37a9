-- push: create one batch of tasks. A task with a target worker goes on that
-- worker's own queue if it is running, else on the shared queue.
-- Applies once: a call repeated because its reply was lost (a Redis restart)
-- finds its first task and does nothing (a repeat would requeue running tasks
-- and list them twice).
--
-- KEYS: seq tasks queue worker_states wake
-- Families: task pq wake
-- ARGV: prefix, n, fun, max_retries, timeout, seed, priority, max_lost,
--       then n times: key, xs, extra, target
-- Reply: the sequence number before the batch (its tasks are numbered base + 1 .. base + n).
--@include "util"
--@include "wake"

if redis.call('EXISTS', p .. 'task:' .. ARGV[9]) == 1 then
  return tonumber(redis.call('HGET', p .. 'task:' .. ARGV[9], 'seq') or '1') - 1
end
local n = tonumber(ARGV[2])
local fun, max_retries, timeout, seed = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local priority, max_lost = tonumber(ARGV[7]), ARGV[8]
local base = redis.call('INCRBY', K.seq, n) - n
local t = now()
local to_shared = 0
for i = 0, n - 1 do
  local j = 9 + 4 * i
  local key, xs, extra, target = ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  local tk = p .. 'task:' .. key
  local seq = base + i + 1
  local score = -priority * 1e12 + seq
  redis.call('HSET', tk, 'xs', xs, 'state', 'queued', 'seq', seq, 'score', score,
             'queued_at', t, 'attempts', 0, 'max_retries', max_retries, 'max_lost', max_lost)
  if extra ~= '' then redis.call('HSET', tk, 'extra', extra) end
  if fun ~= '' then redis.call('HSET', tk, 'fun', fun) end
  if timeout ~= '' then redis.call('HSET', tk, 'timeout', timeout) end
  if seed ~= '' then redis.call('HSET', tk, 'seed', seed) end
  redis.call('RPUSH', K.tasks, key)
  if target ~= '' and redis.call('HGET', K.worker_states, target) == 'running' then
    redis.call('RPUSH', p .. 'pq:' .. target, key)
    redis.call('LPUSH', p .. 'wake:' .. target, '1')
  else
    redis.call('ZADD', K.queue, score, key)
    to_shared = to_shared + 1
  end
end
wake(to_shared)
return base
