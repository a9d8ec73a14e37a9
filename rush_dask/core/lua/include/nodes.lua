-- The end of a task's life: finishing and failing tasks and graph nodes,
-- reference counts of graph results, deleting nodes and their graphs, and
-- the garbage list of result files they leave behind.
-- KEYS used: those of queues, plus leases and failed.
-- Families: task, graph, gdone, fdone, gc, wake:<wid>, worker.
--@include "util"
--@include "queues"

-- Delete a task's hash; a result file it held goes on its host's garbage list.
local function delete_task(key)
  local tk = p .. 'task:' .. key
  local loc = redis.call('HMGET', tk, 'host', 'path')
  if loc[2] then redis.call('RPUSH', p .. 'gc:' .. loc[1], loc[2]) end
  redis.call('DEL', tk)
end

-- The result files to delete on one host (emptied by the worker that asks).
local function take_garbage(host)
  if not host or host == '' then return {} end
  local gk = p .. 'gc:' .. host
  local paths = redis.call('LRANGE', gk, 0, -1)
  if #paths > 0 then redis.call('DEL', gk) end
  return paths
end


-- Delete a graph's bookkeeping: its hash, its gdone list and its lease.
local function forget_graph(gid)
  redis.call('DEL', p .. 'graph:' .. gid, p .. 'gdone:' .. gid)
  redis.call('ZREM', K.leases, gid)
end

-- Delete a graph node; the graph's bookkeeping goes with its last node.
local function drop_node(key, gid)
  delete_task(key)
  if redis.call('HINCRBY', p .. 'graph:' .. gid, 'live', -1) <= 0 then forget_graph(gid) end
end

-- One reference less on a graph node's result (a dependent finished, or the
-- client released it). A finished or failed node that nothing needs is deleted.
local function decref(key)
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'state', 'graph')
  if not f[1] then return end  -- already deleted (a cancelled graph)
  local refs = redis.call('HINCRBY', tk, 'refs', -1)
  if refs <= 0 and (f[1] == 'finished' or f[1] == 'failed') then drop_node(key, f[2]) end
end

-- Tell the client holding futures on a node (field notify: the id of its list
-- fdone:<id>; '1' means a compute, which reads gdone instead) that it is done.
local function tell_futures_client(notify, item)
  if notify and notify ~= '1' and notify ~= '0' and notify ~= '' then
    redis.call('RPUSH', p .. 'fdone:' .. notify, item)
  end
end

-- Fail a graph node and, transitively, every node that depends on it (they
-- could never run). Each gets the root's error; each stops needing its inputs.
-- A graph computed by a client is told through its gdone list ('!' + key).
local function fail_graph_node(key, t)
  local root = redis.call('HMGET', p .. 'task:' .. key, 'error', 'traceback', 'exception', 'graph', 'notify')
  if root[5] == '1' then
    -- The client reads the error, then cancels the graph: keep the node till then.
    redis.call('HINCRBY', p .. 'task:' .. key, 'refs', 1)
    redis.call('RPUSH', p .. 'gdone:' .. root[4], '!' .. key)
  end
  local stack = {key}
  while #stack > 0 do
    local k = table.remove(stack)
    local tk = p .. 'task:' .. k
    local f = redis.call('HMGET', tk, 'state', 'deps', 'dependents', 'refs', 'graph', 'notify')
    if f[1] and f[1] ~= 'finished' and f[1] ~= 'failed' then
      tell_futures_client(f[6], '!' .. k)
      if f[1] == 'queued' then dequeue(k) end
      redis.call('HSET', tk, 'state', 'failed', 'finished_at', t)
      if k ~= key then
        redis.call('HSET', tk, 'error', 'dependency ' .. key .. ' failed: ' .. (root[1] or ''),
                   'traceback', root[2] or '')
        if root[3] then redis.call('HSET', tk, 'exception', root[3]) end
      end
      for _, dep in ipairs(split(f[2])) do decref(dep) end
      for _, child in ipairs(split(f[3])) do stack[#stack + 1] = child end
      if tonumber(f[4] or '0') <= 0 then drop_node(k, f[5]) end
    end
  end
end

-- Move a task to 'failed' for good.
local function fail(key, reason, t)
  local tk = p .. 'task:' .. key
  if reason then redis.call('HSET', tk, 'error', reason) end
  if redis.call('HEXISTS', tk, 'graph') == 1 then return fail_graph_node(key, t) end
  redis.call('HSET', tk, 'state', 'failed', 'finished_at', t)
  redis.call('RPUSH', K.failed, key)
end

-- A graph node finished: its inputs lose a reference, its dependents whose
-- inputs are now all done are queued (near their largest inputs, when they
-- are held on a host), its client is told.
-- f: the node's fields graph, deps, dependents, notify, refs (read by settle).
-- held: nil when payload is the result itself (stored in ys); else
-- {worker_id, nbytes} and payload is the path of the result's file.
local function finish_graph_node(key, payload, t, f, held)
  local tk = p .. 'task:' .. key
  -- The node itself (xs) is not needed any more: emptied in the same write.
  if held then
    local host = redis.call('HGET', p .. 'worker:' .. held[1], 'host') or ''
    redis.call('HSET', tk, 'state', 'finished', 'at', held[1], 'host', host, 'path', payload,
               'nbytes', held[2], 'finished_at', t, 'xs', '')
  else
    redis.call('HSET', tk, 'state', 'finished', 'ys', payload, 'finished_at', t, 'xs', '')
  end
  redis.call('HINCRBY', p .. 'graph:' .. f[1], 'done', 1)  -- progress, for dashboards
  for _, dep in ipairs(split(f[2])) do decref(dep) end
  local released = 0
  for _, child in ipairs(split(f[3])) do
    local ck = p .. 'task:' .. child
    local waiting = redis.call('HINCRBY', ck, 'waiting', -1)
    if waiting < 0 then
      redis.call('DEL', ck)  -- no such node (cancelled, or not pushed yet): undo the increment
    elseif waiting == 0 then
      local near = nil
      if held then near = enqueue_ready(child) else enqueue(child) end
      if near and (not held or near ~= held[1]) then
        redis.call('LPUSH', p .. 'wake:' .. near, '1')
        redis.call('LTRIM', p .. 'wake:' .. near, 0, 7)
      end
      released = released + 1
    end
  end
  wake(released)
  if f[4] == '1' then redis.call('RPUSH', p .. 'gdone:' .. f[1], key) end
  tell_futures_client(f[4], key)
  if tonumber(f[5] or '0') <= 0 then drop_node(key, f[1]) end
end


