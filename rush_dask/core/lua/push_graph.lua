-- push_graph: create the nodes of a Dask graph, one batch per call. The client
-- sends the batches in a topological order (dask.order), so a node's inputs
-- exist when it is created; workers may already run the first batches. A
-- node waits for its inputs that are not finished yet, and fails at once if
-- one failed. Inputs from earlier graphs (persisted results, futures) get one
-- more reference and learn about the new dependent.
-- Applies once: a batch repeated because its reply was lost (a Redis restart)
-- finds its mark in the graph hash and does nothing (a repeat would requeue
-- nodes that run or finished meanwhile).
-- A compute (lease > 0) gets a lease that each batch, and then its client,
-- renews; the heartbeats of workers reap it once it expires.
-- A node whose data the client already wrote to a file of its host (a large
-- DataNode) is created finished, held there: nothing runs it.
-- Persisted results and futures are held by their client under its lease
-- (owner): the references it takes are recorded in crefs:<owner>, so that
-- they go if it dies (see clients.lua).
--
-- KEYS: clients leases queue rqueues lqs running worker_states failed wake
-- Families: task worker held pq lq rq wake graph gdone fdone gc crefs creq
-- ARGV: prefix, graph_id, n_nodes_in_graph, notify ('1': a client reads gdone;
--       '0': nobody; else the id of the futures client's list fdone:<id>),
--       lease seconds (of a compute; 0 for none), owner ('' or the client that
--       holds the outputs under its lease), the owner's lease seconds,
--       then per node: key, xs, refs, deps, dependents, score, res,
--       max_retries, max_lost, held ('' or 'holder<TAB>host<TAB>path<TAB>nbytes'),
--       mine ('1' if refs counts one reference of the owner)
-- Reply: the number of nodes queued (0 for a repeated batch).
--@include "clients"

local gid, notify, lease, owner = ARGV[2], ARGV[4], tonumber(ARGV[5]), ARGV[6]
if ARGV[8] and redis.call('HSETNX', p .. 'graph:' .. gid, 'batch:' .. ARGV[8], 1) == 0 then return 0 end
local t = now()
if owner ~= '' then ensure_client(owner, t, tonumber(ARGV[7])) end
if redis.call('HSETNX', p .. 'graph:' .. gid, 'live', ARGV[3]) == 1 then  -- first batch
  redis.call('HSET', p .. 'graph:' .. gid, 'n', ARGV[3])
end
if lease > 0 then redis.call('ZADD', K.leases, tonumber(t) + lease, gid) end
local queued = 0
for j = 8, #ARGV, 11 do
  local key = ARGV[j]
  local tk = p .. 'task:' .. key
  if owner ~= '' and ARGV[j + 10] == '1' then count_ref(owner, key, 1) end
  if ARGV[j + 9] ~= '' then
    -- Data the client embedded in the graph, already written to a file of its host: the
    -- node is born finished, held there (at, host, path, nbytes, tab-separated).
    local at, host, path, nbytes = string.match(ARGV[j + 9], '([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)')
    redis.call('HSET', tk, 'xs', '', 'graph', gid, 'refs', ARGV[j + 2], 'deps', '',
               'dependents', ARGV[j + 4], 'score', ARGV[j + 5], 'queued_at', t, 'finished_at', t,
               'waiting', 0, 'state', 'finished', 'at', at, 'host', host, 'path', path, 'nbytes', nbytes)
    redis.call('HINCRBY', p .. 'graph:' .. gid, 'done', 1)
    if notify ~= '0' then redis.call('HSET', tk, 'notify', notify) end
    tell_futures_client(notify, key)  -- a future on it is done already
  else
    local waiting, failed_input = 0, nil
    for _, dep in ipairs(split(ARGV[j + 3])) do
      local dk = p .. 'task:' .. dep
      local f = redis.call('HMGET', dk, 'state', 'graph')
      if f[1] == 'failed' then failed_input = dep end
      if f[2] ~= gid then
        redis.call('HINCRBY', dk, 'refs', 1)
        if f[1] ~= 'finished' then
          redis.call('HSET', dk, 'dependents', (redis.call('HGET', dk, 'dependents') or '') .. ' ' .. key)
          waiting = waiting + 1
        end
      elseif f[1] ~= 'finished' then
        waiting = waiting + 1
      end
    end
    redis.call('HSET', tk, 'xs', ARGV[j + 1], 'graph', gid, 'refs', ARGV[j + 2],
               'deps', ARGV[j + 3], 'dependents', ARGV[j + 4], 'score', ARGV[j + 5],
               'max_lost', ARGV[j + 8], 'queued_at', t, 'waiting', waiting,
               'state', waiting == 0 and 'queued' or 'waiting')
    -- Fields with their default value are left out (fewer writes per node).
    if ARGV[j + 6] ~= '' then redis.call('HSET', tk, 'res', ARGV[j + 6]) end
    if ARGV[j + 7] ~= '0' then redis.call('HSET', tk, 'max_retries', ARGV[j + 7]) end
    if notify ~= '0' then redis.call('HSET', tk, 'notify', notify) end
    if failed_input then
      local e = redis.call('HMGET', p .. 'task:' .. failed_input, 'error', 'traceback', 'exception')
      redis.call('HSET', tk, 'state', 'waiting', 'error',
                 'dependency ' .. failed_input .. ' failed: ' .. (e[1] or ''), 'traceback', e[2] or '')
      if e[3] then redis.call('HSET', tk, 'exception', e[3]) end
      fail_graph_node(key, t)
    elseif waiting == 0 then
      if ARGV[j + 3] ~= '' then enqueue_ready(key) else add_to_queue(key, ARGV[j + 5], ARGV[j + 6]) end
      queued = queued + 1
    end
  end
end
wake(queued)
return queued
