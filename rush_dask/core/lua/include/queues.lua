-- Putting tasks on queues and taking them off: the shared queue, the queues of
-- resources, workers' own queues (pq:<wid>) and local queues (lq:<wid>).
-- KEYS used: queue rqueues lqs worker_states wake.
-- Families: task, rq, pq, lq.
--@include "wake"

-- Queue a task by its score: on the shared queue, or on the queue of the
-- resources it needs (field res, e.g. 'GPU=1'), which only workers that
-- have them pop.
local function add_to_queue(key, score, res)
  if res and res ~= '' then
    redis.call('SADD', K.rqueues, res)
    redis.call('ZADD', p .. 'rq:' .. res, score, key)
  else
    redis.call('ZADD', K.queue, score, key)
  end
end

local function enqueue(key)
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'score', 'res')
  redis.call('HSET', tk, 'state', 'queued')
  add_to_queue(key, f[1], f[2])
end

-- Remove a queued task from whichever queue holds it.
local function dequeue(key)
  local f = redis.call('HMGET', p .. 'task:' .. key, 'res', 'lq')
  if f[2] and redis.call('ZREM', p .. 'lq:' .. f[2], key) == 1 then return end
  if f[1] and f[1] ~= '' then redis.call('ZREM', p .. 'rq:' .. f[1], key)
  else redis.call('ZREM', K.queue, key) end
end

-- Queue a graph node whose inputs are ready, near its largest inputs: on the
-- local queue of the worker that holds most of their bytes (at least
-- @LOCALITY_MIN@) if it is running, else as enqueue() does. Returns that worker's id.
local function enqueue_ready(key)
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'score', 'res', 'deps')
  redis.call('HSET', tk, 'state', 'queued')
  if not f[2] or f[2] == '' then
    local bytes, best, most = {}, nil, @LOCALITY_MIN@ - 1
    for dep in string.gmatch(f[3] or '', '%S+') do
      local d = redis.call('HMGET', p .. 'task:' .. dep, 'at', 'nbytes')
      if d[1] then
        local b = (bytes[d[1]] or 0) + tonumber(d[2] or '0')
        bytes[d[1]] = b
        if b > most then best, most = d[1], b end
      end
    end
    if best and redis.call('HGET', K.worker_states, best) == 'running' then
      redis.call('ZADD', p .. 'lq:' .. best, f[1], key)
      redis.call('SADD', K.lqs, best)
      redis.call('HSET', tk, 'lq', best)
      return best
    end
  end
  add_to_queue(key, f[1], f[2])
  return nil
end


-- Put a task back on its queue with the score it was pushed with.
local function requeue(key)
  redis.call('HDEL', p .. 'task:' .. key, 'worker_id', 'started_at')
  enqueue(key)
  wake(1)
end


-- Move the tasks waiting on one worker's own queue and local queue to the shared queue.
local function release_priority_queue(wid)
  local pq = p .. 'pq:' .. wid
  local keys = redis.call('LRANGE', pq, 0, -1)
  for _, key in ipairs(keys) do enqueue(key) end
  redis.call('DEL', pq)
  local lq = p .. 'lq:' .. wid
  local near = redis.call('ZRANGE', lq, 0, -1, 'WITHSCORES')
  for i = 1, #near, 2 do redis.call('ZADD', K.queue, near[i + 1], near[i]) end
  redis.call('DEL', lq)
  redis.call('SREM', K.lqs, wid)
  wake(#keys + #near / 2)
end

