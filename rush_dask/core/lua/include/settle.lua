-- A worker's side of a task: handing it over (task_reply) and recording its
-- outcome (settle).
-- KEYS used: those of nodes, plus running, archive and finished.
-- Families: task, held.
--@include "nodes"

-- What a worker needs to run a task; with wid, the task is first handed to
-- that worker (state running, attempts + 1). For a graph node, the results
-- of its inputs come along when they are small (one round trip); large ones
-- are left for the worker to read, or to find in its own cache.
local function task_reply(key, wid, t)
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'xs', 'fun', 'timeout', 'seed', 'seq', 'attempts', 'graph', 'deps')
  if wid then  -- hand the queued task to worker wid
    f[6] = (tonumber(f[6]) or 0) + 1
    redis.call('HSET', tk, 'state', 'running', 'worker_id', wid, 'started_at', t, 'attempts', f[6])
    redis.call('SADD', K.running, key)
    redis.call('SADD', p .. 'held:' .. wid, key)
  end
  -- Per input: key, value (or '' when large or held), and where it is held ('' if in Redis).
  local inputs = {}
  if f[7] then
    for _, dep in ipairs(split(f[8])) do
      local d = redis.call('HMGET', p .. 'task:' .. dep, 'ys', 'at', 'host', 'path')
      local value = d[1] or ''
      inputs[#inputs + 1] = dep
      if #value <= @INLINE_LIMIT@ then inputs[#inputs + 1] = value else inputs[#inputs + 1] = '' end
      inputs[#inputs + 1] = d[2] or ''
      inputs[#inputs + 1] = d[3] or ''
      inputs[#inputs + 1] = d[4] or ''
    end
  end
  return {key, f[1], f[2], f[3], f[4], f[5], f[6], f[7], inputs}
end

-- Record the outcome of a running task. Only the worker that holds it may:
-- anything else (a worker declared lost, a duplicate reply) is dropped.
-- Outcome 'held' (graph nodes only): the result stays in a file on the
-- worker's host; payload is its path and tb its size in bytes.
local function settle(wid, key, outcome, payload, tb, exc, t)
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'state', 'worker_id', 'graph', 'deps', 'dependents', 'notify', 'refs')
  if f[1] ~= 'running' or f[2] ~= wid then
    -- A repeated call (its first reply was lost) finds its own work done.
    if f[2] == wid and f[1] == 'finished' and outcome ~= 'error' then return 'finished' end
    return 'dropped'
  end
  redis.call('SREM', K.running, key)
  redis.call('SREM', p .. 'held:' .. wid, key)
  if outcome == 'held' and f[3] then
    finish_graph_node(key, payload, t, {f[3], f[4], f[5], f[6], f[7]}, {wid, tb})
    return 'finished'
  end
  if outcome == 'finished' then
    if f[3] then
      finish_graph_node(key, payload, t, {f[3], f[4], f[5], f[6], f[7]})
    else
      -- The archive row: everything a DataFrame row needs, packed once, so that
      -- reading many finished tasks is one LRANGE. archive[i] is finished[i].
      local r = redis.call('HMGET', tk, 'xs', 'extra', 'queued_at', 'started_at', 'attempts')
      local row = cmsgpack.pack({key, r[1] or '', payload, r[2] or '', wid, r[3] or '', r[4] or '',
                                 t, r[5] or '0'})
      local n = redis.call('RPUSH', K.archive, row)
      redis.call('HSET', tk, 'state', 'finished', 'finished_at', t, 'archive_index', n - 1)
      redis.call('RPUSH', K.finished, key)
    end
    return 'finished'
  end
  redis.call('HSET', tk, 'error', payload, 'traceback', tb)
  if exc ~= '' then redis.call('HSET', tk, 'exception', exc) end
  local n_errors = redis.call('HINCRBY', tk, 'n_errors', 1)
  if n_errors <= tonumber(redis.call('HGET', tk, 'max_retries') or '0') then
    requeue(key)
    return 'retried'
  end
  fail(key, nil, t)
  return 'failed'
end

