"""Every Lua script of rush_dask, in one place.

Each state change of a task or a worker is one of these scripts, so it is
atomic: Redis runs a script to the end before it serves anyone else. That is
what makes "first writer wins" hold: a worker that was declared lost and
comes back finds its state changed and its result is dropped.

All scripts take the network's key prefix (``rush:{NET}:``) as ARGV[1] and
build the key names from it; every key of a network shares one hash tag, so
the scripts stay within one slot of a Redis Cluster.

Task hash fields (``task:<key>``): xs, extra, state, fun, seq, score,
queued_at, started_at, finished_at, worker_id, attempts, max_retries,
n_errors, max_lost, n_lost, timeout, seed, own, error, traceback, exception,
archive_index. The outputs of a finished task live in its archive row: the
list ``archive`` holds one msgpack row per finished task (key, xs, ys,
extra, worker_id, queued_at, started_at, finished_at, attempts), in the
order of ``finished``.

Nodes of a Dask graph are the same kind of task, popped by the same script,
with a few more fields: graph (its id), deps and dependents (space-separated
task keys), waiting (inputs not finished yet; queued at 0), refs (results
not yet read: dependents still to run, plus one for the client; deleted at
0), res (resources it needs) and notify (a client reads ``gdone:<graph>``).
Their extra state ``waiting`` means "inputs not ready". A node's result is
either in ``ys`` (small results) or held on its producer's host (see
:mod:`rush_dask.dataplane`): then ``at`` (the producer's worker id),
``host``, ``path`` (its file there) and ``nbytes``; ``lq`` names the worker
on whose local queue the node was put, near its largest inputs.
"""

from __future__ import annotations

from typing import Any

from .constants import INLINE_LIMIT, LOCALITY_MIN

# Helpers shared by the scripts below (prepended to each of them).
_PREAMBLE = r"""
local p = ARGV[1]

-- Server time as "seconds.micros": one clock for every host of the network.
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- Wake up to n idle workers blocked on the shared wake list.
local function wake(n)
  if n <= 0 then return end
  local tokens = {}
  for i = 1, math.min(n, 64) do tokens[i] = '1' end
  if redis.call('LPUSH', p .. 'wake', unpack(tokens)) > 64 then
    redis.call('LTRIM', p .. 'wake', 0, 63)
  end
end

-- Space-separated task keys (fields deps/dependents of graph nodes) as a list.
local function split(text)
  local out = {}
  if text then for key in string.gmatch(text, '%S+') do out[#out + 1] = key end end
  return out
end

-- Queue a task by its score: on the shared queue, or on the queue of the
-- resources it needs (field res, e.g. 'GPU=1'), which only workers that
-- have them pop.
local function add_to_queue(key, score, res)
  if res and res ~= '' then
    redis.call('SADD', p .. 'rqueues', res)
    redis.call('ZADD', p .. 'rq:' .. res, score, key)
  else
    redis.call('ZADD', p .. 'queue', score, key)
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
  else redis.call('ZREM', p .. 'queue', key) end
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
    if best and redis.call('HGET', p .. 'worker_states', best) == 'running' then
      redis.call('ZADD', p .. 'lq:' .. best, f[1], key)
      redis.call('SADD', p .. 'lqs', best)
      redis.call('HSET', tk, 'lq', best)
      return best
    end
  end
  add_to_queue(key, f[1], f[2])
  return nil
end

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

-- Put a task back on its queue with the score it was pushed with.
local function requeue(key)
  redis.call('HDEL', p .. 'task:' .. key, 'worker_id', 'started_at')
  enqueue(key)
  wake(1)
end

-- Delete a graph's bookkeeping: its hash, its gdone list and its lease.
local function forget_graph(gid)
  redis.call('DEL', p .. 'graph:' .. gid, p .. 'gdone:' .. gid)
  redis.call('ZREM', p .. 'leases', gid)
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
  redis.call('RPUSH', p .. 'failed', key)
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
    redis.call('SADD', p .. 'running', key)
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
  redis.call('SREM', p .. 'running', key)
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
      local n = redis.call('RPUSH', p .. 'archive', row)
      redis.call('HSET', tk, 'state', 'finished', 'finished_at', t, 'archive_index', n - 1)
      redis.call('RPUSH', p .. 'finished', key)
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

-- Move the tasks waiting on one worker's own queue and local queue to the shared queue.
local function release_priority_queue(wid)
  local pq = p .. 'pq:' .. wid
  local keys = redis.call('LRANGE', pq, 0, -1)
  for _, key in ipairs(keys) do enqueue(key) end
  redis.call('DEL', pq)
  local lq = p .. 'lq:' .. wid
  local near = redis.call('ZRANGE', lq, 0, -1, 'WITHSCORES')
  for i = 1, #near, 2 do redis.call('ZADD', p .. 'queue', near[i + 1], near[i]) end
  redis.call('DEL', lq)
  redis.call('SREM', p .. 'lqs', wid)
  wake(#keys + #near / 2)
end

-- Delete one node of a cancelled graph wherever it is: off its queue, off
-- the worker that runs it (whose late result is then dropped), and give back
-- the references it held on results of earlier graphs.
local function cancel_node(key, gid)
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'state', 'worker_id', 'deps')
  if not f[1] then return end
  if f[1] == 'queued' then dequeue(key) end
  if f[1] == 'running' then
    redis.call('SREM', p .. 'running', key)
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
  local gid = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', t, 'LIMIT', 0, 1)[1]
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
"""

# Create n tasks. Tasks with a target worker go on that worker's own queue if
# it is running, else on the shared queue. Returns the first sequence number.
# Applies once: a call repeated because its reply was lost (a Redis restart)
# finds its first task and does nothing (a repeat would requeue running tasks
# and list them twice).
# ARGV: p, n, fun, max_retries, timeout, seed, priority, max_lost,
#       then n times: key, xs, extra, target
PUSH = r"""
if redis.call('EXISTS', p .. 'task:' .. ARGV[9]) == 1 then
  return tonumber(redis.call('HGET', p .. 'task:' .. ARGV[9], 'seq') or '1') - 1
end
local n = tonumber(ARGV[2])
local fun, max_retries, timeout, seed = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local priority, max_lost = tonumber(ARGV[7]), ARGV[8]
local base = redis.call('INCRBY', p .. 'seq', n) - n
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
  redis.call('RPUSH', p .. 'tasks', key)
  if target ~= '' and redis.call('HGET', p .. 'worker_states', target) == 'running' then
    redis.call('RPUSH', p .. 'pq:' .. target, key)
    redis.call('LPUSH', p .. 'wake:' .. target, '1')
  else
    redis.call('ZADD', p .. 'queue', score, key)
    to_shared = to_shared + 1
  end
end
wake(to_shared)
return base
"""

# The worker's one round trip: record the outcomes of the tasks it just ran,
# then pop up to `want` tasks (own queue first, then the queues of resources
# it has, then the shared queue). A worker asks for more than one task only
# when its tasks are very short, so the round trip is shared by several.
# Idempotent: a call repeated with the same request id (because its reply was
# lost) gets the tasks popped the first time, not new ones.
# With min_queue > 0 it is a prefetch (the worker is still busy): it pops only
# while the shared queue holds at least min_queue tasks, so a busy worker
# never takes the last tasks away from idle ones.
# Graph nodes queued near their inputs on another worker's local queue are
# taken ("stolen") only when this worker has nothing else to do.
# ARGV: p, worker_id, request_id, resources ('GPU=1,MEM=8' or ''), want,
#       min_queue, n, host (of the worker, for its garbage), then n times:
#       key, outcome ('finished'|'held'|'error'), payload, traceback, exception
# Returns {kind, reason, notes, garbage, task...}: kind is 'tasks', 'empty' or
# 'stop' (reason: 'terminate', 'lost', 'killed'); notes has one entry per
# outcome (finished, retried, failed or dropped); garbage lists result files
# to delete on this host; each task is
# {key, xs, fun, timeout, seed, seq, attempts, graph, inputs}.
SETTLE_AND_POP = r"""
local wid, request, resources = ARGV[2], ARGV[3], ARGV[4]
local want, min_queue, n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local state = redis.call('HGET', p .. 'worker_states', wid)
local notes = {}
if state ~= 'running' then
  for i = 1, n do notes[i] = 'dropped' end
  return {'stop', state or 'unknown', notes, {}}
end
local t = now()
for i = 0, n - 1 do
  local j = 9 + 5 * i
  notes[i + 1] = settle(wid, ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4], t)
end
local garbage = take_garbage(ARGV[8])
if want == 0 or (min_queue > 0 and redis.call('ZCARD', p .. 'queue') < min_queue) then
  return {'empty', '', notes, garbage}
end
local wk = p .. 'worker:' .. wid
if redis.call('HGET', wk, 'terminate') == '1' then return {'stop', 'terminate', notes, garbage} end
local reply = {'tasks', '', notes, garbage}
local last = redis.call('HMGET', wk, 'request', 'current')
if last[1] == request then
  for _, key in ipairs(split(last[2])) do
    local f = redis.call('HMGET', p .. 'task:' .. key, 'state', 'worker_id')
    if f[1] == 'running' and f[2] == wid then reply[#reply + 1] = task_reply(key) end
  end
  if #reply > 4 then return reply end
end
local have, specs = nil, {}
if resources ~= '' then
  have = {}
  for name, amount in string.gmatch(resources, '([^=,]+)=([^,]+)') do have[name] = tonumber(amount) end
  for _, spec in ipairs(redis.call('SMEMBERS', p .. 'rqueues')) do
    local ok = true
    for name, amount in string.gmatch(spec, '([^=,]+)=([^,]+)') do
      if (have[name] or 0) < tonumber(amount) then ok = false end
    end
    if ok then specs[#specs + 1] = p .. 'rq:' .. spec end
  end
end
local popped = {}
local thieves = nil
while #popped < want do
  local key = redis.call('LPOP', p .. 'pq:' .. wid)
  if not key then
    local z = redis.call('ZPOPMIN', p .. 'lq:' .. wid)
    if #z > 0 then key = z[1] end
  end
  if not key then
    for _, queue in ipairs(specs) do
      local z = redis.call('ZPOPMIN', queue)
      if #z > 0 then key = z[1]; break end
    end
  end
  if not key then
    local z = redis.call('ZPOPMIN', p .. 'queue')
    if #z > 0 then key = z[1] end
  end
  if not key and min_queue == 0 then
    -- Nothing of its own: take a node from another worker's local queue.
    thieves = thieves or redis.call('SMEMBERS', p .. 'lqs')
    while not key and #thieves > 0 do
      local other = table.remove(thieves)
      local z = redis.call('ZPOPMIN', p .. 'lq:' .. other)
      if #z > 0 then key = z[1] else redis.call('SREM', p .. 'lqs', other) end
    end
  end
  if not key then break end
  popped[#popped + 1] = key
  reply[#reply + 1] = task_reply(key, wid, t)
end
if #popped == 0 then
  if min_queue == 0 then redis.call('DEL', p .. 'wake') end
  return {'empty', '', notes, garbage}
end
redis.call('HSET', wk, 'request', request, 'current', table.concat(popped, ' '))
return reply
"""

# Decentralized mode: a worker creates tasks that it runs itself.
# ARGV: p, worker_id, n, then n times: key, xs, extra
PUSH_RUNNING = r"""
local wid = ARGV[2]
if redis.call('HGET', p .. 'worker_states', wid) ~= 'running' then
  return redis.error_reply('worker ' .. wid .. ' is not running')
end
local n = tonumber(ARGV[3])
local base = redis.call('INCRBY', p .. 'seq', n) - n
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
  redis.call('RPUSH', p .. 'tasks', key)
  redis.call('SADD', p .. 'running', key)
  redis.call('SADD', p .. 'held:' .. wid, key)
end
return base
"""

# Register a new worker. Returns 0 if the id is taken.
# ARGV: p, worker_id, heartbeat_expire_ms, then field, value pairs
REGISTER = r"""
local wid = ARGV[2]
if redis.call('HEXISTS', p .. 'worker_states', wid) == 1 then return 0 end
redis.call('HSET', p .. 'worker_states', wid, 'running')
redis.call('HSET', p .. 'worker:' .. wid, 'started_at', now())
for i = 4, #ARGV, 2 do redis.call('HSET', p .. 'worker:' .. wid, ARGV[i], ARGV[i + 1]) end
redis.call('SET', p .. 'hb:' .. wid, '1', 'PX', ARGV[3])
return 1
"""

# Refresh a worker's heartbeat, unless its state is no longer 'running' (a
# worker declared lost must not come back to life).
# Each beat of a running worker also reaps part of an abandoned compute, and
# takes the result files to delete on its host (an idle worker's garbage).
# ARGV: p, worker_id, heartbeat_expire_ms, reap_batch, host.
# Returns {state, terminate flag, garbage}.
HEARTBEAT = r"""
local wid = ARGV[2]
local state = redis.call('HGET', p .. 'worker_states', wid)
if state ~= 'running' then return {state or 'unknown', '0', {}} end
redis.call('SET', p .. 'hb:' .. wid, '1', 'PX', ARGV[3])
reap_abandoned_graph(tonumber(now()), tonumber(ARGV[4] or '0'))
return {'running', redis.call('HGET', p .. 'worker:' .. wid, 'terminate') or '0', take_garbage(ARGV[5])}
"""

# A worker stops gracefully: state 'terminated', its own queue goes to the
# shared queue, tasks it still holds are requeued (or failed, for tasks it
# created itself).
# ARGV: p, worker_id. Returns the worker's state after the call.
DEREGISTER = r"""
local wid = ARGV[2]
local state = redis.call('HGET', p .. 'worker_states', wid)
if state ~= 'running' then return state end
local t = now()
redis.call('HSET', p .. 'worker_states', wid, 'terminated')
redis.call('HSET', p .. 'worker:' .. wid, 'stopped_at', t)
redis.call('DEL', p .. 'hb:' .. wid)
for _, key in ipairs(redis.call('SMEMBERS', p .. 'held:' .. wid)) do
  redis.call('SREM', p .. 'running', key)
  if redis.call('HGET', p .. 'task:' .. key, 'own') == '1' then
    fail(key, 'worker ' .. wid .. ' stopped before finishing its own task', t)
  else
    requeue(key)
  end
end
redis.call('DEL', p .. 'held:' .. wid)
release_priority_queue(wid)
return 'terminated'
"""

# Declare running workers 'lost' or 'killed' and deal with the tasks they
# held: a lost worker's tasks are requeued until a task has been lost
# max_lost times (then failed); a killed worker's tasks are failed.
# With scan = '1', every running worker whose heartbeat key expired is
# declared too. ARGV: p, new_state, reason, scan, worker_ids...
# Returns the ids of the workers whose state changed.
MARK_WORKERS = r"""
local new_state, reason, scan = ARGV[2], ARGV[3], ARGV[4]
local candidates = {}
for i = 5, #ARGV do candidates[#candidates + 1] = ARGV[i] end
if scan == '1' then
  local states = redis.call('HGETALL', p .. 'worker_states')
  for i = 1, #states, 2 do
    if states[i + 1] == 'running' and redis.call('EXISTS', p .. 'hb:' .. states[i]) == 0 then
      candidates[#candidates + 1] = states[i]
    end
  end
end
local t = now()
local changed = {}
for _, wid in ipairs(candidates) do
  if redis.call('HGET', p .. 'worker_states', wid) == 'running' then
    redis.call('HSET', p .. 'worker_states', wid, new_state)
    redis.call('HSET', p .. 'worker:' .. wid, 'stopped_at', t)
    redis.call('DEL', p .. 'hb:' .. wid)
    for _, key in ipairs(redis.call('SMEMBERS', p .. 'held:' .. wid)) do
      local tk = p .. 'task:' .. key
      local f = redis.call('HMGET', tk, 'state', 'worker_id', 'own', 'max_lost')
      if f[1] == 'running' and f[2] == wid then
        redis.call('SREM', p .. 'running', key)
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
"""

# Fail every queued task (shared queue and all workers' own queues).
# ARGV: p, reason. Returns the number of tasks failed.
EMPTY_QUEUE = r"""
local reason = ARGV[2]
local t = now()
local keys = redis.call('ZRANGE', p .. 'queue', 0, -1)
redis.call('DEL', p .. 'queue')
for _, wid in ipairs(redis.call('HKEYS', p .. 'worker_states')) do
  for _, key in ipairs(redis.call('LRANGE', p .. 'pq:' .. wid, 0, -1)) do keys[#keys + 1] = key end
  redis.call('DEL', p .. 'pq:' .. wid)
end
for _, spec in ipairs(redis.call('SMEMBERS', p .. 'rqueues')) do
  for _, key in ipairs(redis.call('ZRANGE', p .. 'rq:' .. spec, 0, -1)) do keys[#keys + 1] = key end
  redis.call('DEL', p .. 'rq:' .. spec)
end
for _, wid in ipairs(redis.call('SMEMBERS', p .. 'lqs')) do
  for _, key in ipairs(redis.call('ZRANGE', p .. 'lq:' .. wid, 0, -1)) do keys[#keys + 1] = key end
  redis.call('DEL', p .. 'lq:' .. wid)
end
redis.call('DEL', p .. 'lqs')
for _, key in ipairs(keys) do fail(key, reason, t) end
return #keys
"""

# Create the nodes of a Dask graph, one batch per call. The client sends the
# batches in a topological order (dask.order), so a node's inputs exist when
# it is created; workers may already run the first batches. A node waits for
# its inputs that are not finished yet, and fails at once if one failed.
# Inputs from earlier graphs (persisted results, futures) get one more
# reference and learn about the new dependent.
# Applies once: a batch repeated because its reply was lost (a Redis restart)
# finds its mark in the graph hash and does nothing (a repeat would requeue
# nodes that run or finished meanwhile).
# A compute (lease > 0) gets a lease that each batch, and then its client,
# renews; the heartbeats of workers reap it once it expires.
# A node whose data the client already wrote to a file of its host (a large
# DataNode) is created finished, held there: nothing runs it.
# ARGV: p, graph_id, n_nodes_in_graph, notify ('1': a client reads gdone; '0': nobody;
#       else the id of the futures client's list fdone:<id>), lease seconds,
#       then per node: key, xs, refs, deps, dependents, score, res, max_retries, max_lost,
#       held ('' or 'holder<TAB>host<TAB>path<TAB>nbytes')
PUSH_GRAPH = r"""
local gid, notify, lease = ARGV[2], ARGV[4], tonumber(ARGV[5])
if ARGV[6] and redis.call('HSETNX', p .. 'graph:' .. gid, 'batch:' .. ARGV[6], 1) == 0 then return 0 end
local t = now()
if redis.call('HSETNX', p .. 'graph:' .. gid, 'live', ARGV[3]) == 1 then  -- first batch
  redis.call('HSET', p .. 'graph:' .. gid, 'n', ARGV[3])
end
if lease > 0 then redis.call('ZADD', p .. 'leases', tonumber(t) + lease, gid) end
local queued = 0
for j = 6, #ARGV, 10 do
  local key = ARGV[j]
  local tk = p .. 'task:' .. key
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
"""

# Drop one reference from each node (the client read or released it).
# ARGV: p, keys...
RELEASE = r"""
for i = 2, #ARGV do decref(ARGV[i]) end
return #ARGV - 1
"""

# Cancel a graph: delete every node still there, take them off the queues and
# off the workers (their late results are dropped), and give back the
# references they held on results of earlier graphs.
# ARGV: p, graph_id, keys...
CANCEL_GRAPH = r"""
local gid = ARGV[2]
for i = 3, #ARGV do cancel_node(ARGV[i], gid) end
forget_graph(gid)
return 1
"""

# Cancel futures: each node not done yet fails with `reason`, and so does what
# depends on it; a running one is taken off its worker (its late result is dropped).
# ARGV: p, reason, keys... Returns how many were cancelled.
CANCEL_FUTURES = r"""
local t = now()
local n = 0
for i = 3, #ARGV do
  local key = ARGV[i]
  local tk = p .. 'task:' .. key
  local f = redis.call('HMGET', tk, 'state', 'worker_id')
  if f[1] and f[1] ~= 'finished' and f[1] ~= 'failed' then
    if f[1] == 'running' then
      redis.call('SREM', p .. 'running', key)
      if f[2] then redis.call('SREM', p .. 'held:' .. f[2], key) end
    end
    redis.call('HSET', tk, 'error', ARGV[2])
    fail_graph_node(key, t)
    n = n + 1
  end
end
return n
"""

# A client that follows its compute renews the graph's lease. Returns 0 if
# the graph is gone or being reaped: the compute was cancelled meanwhile.
# ARGV: p, graph_id, lease_seconds.
RENEW_LEASE = r"""
local gk = p .. 'graph:' .. ARGV[2]
if redis.call('EXISTS', gk) == 0 or redis.call('HEXISTS', gk, 'reaped') == 1 then return 0 end
redis.call('ZADD', p .. 'leases', 'XX', tonumber(now()) + tonumber(ARGV[3]), ARGV[2])
return 1
"""

# Read the same fields of many tasks in one call (for DataFrames): one reply
# instead of one command per task, which is what makes fetching 100,000
# tasks fast. Read-only. ARGV: p, n_fields, fields..., task keys...
FETCH_TASKS = r"""
local n_fields = tonumber(ARGV[2])
local fields = {}
for i = 1, n_fields do fields[i] = ARGV[2 + i] end
local out = {}
for i = 3 + n_fields, #ARGV do
  out[#out + 1] = redis.call('HMGET', p .. 'task:' .. ARGV[i], unpack(fields))
end
return out
"""

_BODIES = {
    "push": PUSH,
    "settle_and_pop": SETTLE_AND_POP,
    "push_running": PUSH_RUNNING,
    "register": REGISTER,
    "heartbeat": HEARTBEAT,
    "deregister": DEREGISTER,
    "mark_workers": MARK_WORKERS,
    "empty_queue": EMPTY_QUEUE,
    "push_graph": PUSH_GRAPH,
    "release": RELEASE,
    "cancel_graph": CANCEL_GRAPH,
    "cancel_futures": CANCEL_FUTURES,
    "renew_lease": RENEW_LEASE,
    "fetch_tasks": FETCH_TASKS,
}


class _Routed:
    """A registered script whose call names one key of the network (its slot) as KEYS[1].

    The scripts build their key names from ARGV[1], the network's prefix; all
    of them share its hash tag, so naming one routes the call, on a Redis
    Cluster, to the master that owns every key of the network.
    """

    def __init__(self, script: Any):
        self.script = script

    def __call__(self, keys: list | None = None, args: list | tuple = (), client: Any = None) -> Any:
        return self.script(keys=keys or [f"{args[0]}seq"], args=args, client=client)


class Scripts:
    """The scripts registered on one client; call as ``scripts.push(args=[...])``.

    redis-py sends EVALSHA and falls back to EVAL if the server lost its
    script cache (after a restart), so the scripts survive Redis restarts.
    """

    def __init__(self, client: Any):
        preamble = (_PREAMBLE.replace("@INLINE_LIMIT@", str(INLINE_LIMIT))
                    .replace("@LOCALITY_MIN@", str(LOCALITY_MIN)))
        for name, body in _BODIES.items():
            setattr(self, name, _Routed(client.register_script(preamble + body)))
