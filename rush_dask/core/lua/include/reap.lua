-- Cancelling graph nodes, and reaping a compute whose client stopped renewing
-- its lease.
-- KEYS used: those of nodes, plus running.
-- Families: task, held, graph.
--@include "nodes"

-- Delete one node of a cancelled graph wherever it is: off its queue, off
-- the worker that runs it (whose late result is then dropped), and give back
-- the references it held on results of earlier graphs.
local function cancel_node(key, gid)
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'state', 'worker_id', 'deps')
  if not f[1] then return end
  if f[1] == 'queued' then dequeue(key) end
  if f[1] == 'running' then
    redis.call('SREM', K.running, key)
    if f[2] then redis.call('SREM', p .. 'held:' .. f[2], key) end
  end
  if f[1] ~= 'finished' and f[1] ~= 'failed' then
    for _, dep in ipairs(split(f[3])) do
      if redis.call('HGET', p .. 'task:' .. dep, 'graph') ~= gid then decref(dep) end
    end
  end
  delete_task(key)
end

-- Cancel, up to `batch` nodes per call, the compute with the oldest expired
-- lease: its client stopped renewing it (died, or hangs), and nobody else
-- would ever read or release its nodes. Nodes are gid.0 .. gid.(n-1).
local function reap_abandoned_graph(t, batch)
  local gid = redis.call('ZRANGEBYSCORE', K.leases, '-inf', t, 'LIMIT', 0, 1)[1]
  if not gid then return end
  local gk = p .. 'graph:' .. gid
  local n = tonumber(redis.call('HGET', gk, 'n') or '0')
  local from = tonumber(redis.call('HGET', gk, 'reaped') or '0')
  local upto = math.min(n, from + batch)
  for i = from, upto - 1 do cancel_node(gid .. '.' .. i, gid) end
  if upto >= n then
    -- The client's hold on outputs that were futures of earlier graphs goes too.
    for _, key in ipairs(split(redis.call('HGET', gk, 'held'))) do decref(key) end
    forget_graph(gid)
  else
    redis.call('HSET', gk, 'reaped', upto)  -- a renewal can no longer save it
  end
end
