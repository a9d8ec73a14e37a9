-- settle_and_pop: the worker's one round trip. Record the outcomes of the
-- tasks it just ran, then pop up to `want` tasks (own queue first, then its
-- local queue, the queues of resources it has, the shared queue). A worker
-- asks for more than one task only when its tasks are very short, so the
-- round trip is shared by several.
-- Idempotent: a call repeated with the same request id (because its reply was
-- lost) gets the tasks popped the first time, not new ones.
-- With min_queue > 0 it is a prefetch (the worker is still busy): it pops only
-- while the shared queue holds at least min_queue tasks, so a busy worker
-- never takes the last tasks away from idle ones.
-- Graph nodes queued near their inputs on another worker's local queue are
-- taken ("stolen") only when this worker has nothing else to do.
--
-- KEYS: worker_states queue rqueues lqs running archive finished failed leases wake
-- Families: task worker held pq lq rq graph gdone fdone gc wake
-- ARGV: prefix, worker_id, request_id, resources ('GPU=1,MEM=8' or ''), want,
--       min_queue, n, host (of the worker, for its garbage), then n times:
--       key, outcome ('finished'|'held'|'error'), payload, traceback, exception
-- Reply: {kind, reason, notes, garbage, task...}: kind is 'tasks', 'empty' or
--       'stop' (reason: 'terminate', 'lost', 'killed'); notes has one entry per
--       outcome (finished, retried, failed or dropped); garbage lists result
--       files to delete on this host; each task is
--       {key, xs, fun, timeout, seed, seq, attempts, graph, inputs}.
--@include "settle"

local wid, request, resources = ARGV[2], ARGV[3], ARGV[4]
local want, min_queue, n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local state = redis.call('HGET', K.worker_states, wid)
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
if want == 0 or (min_queue > 0 and redis.call('ZCARD', K.queue) < min_queue) then
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
  for _, spec in ipairs(redis.call('SMEMBERS', K.rqueues)) do
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
    local z = redis.call('ZPOPMIN', K.queue)
    if #z > 0 then key = z[1] end
  end
  if not key and min_queue == 0 then
    -- Nothing of its own: take a node from another worker's local queue.
    thieves = thieves or redis.call('SMEMBERS', K.lqs)
    while not key and #thieves > 0 do
      local other = table.remove(thieves)
      local z = redis.call('ZPOPMIN', p .. 'lq:' .. other)
      if #z > 0 then key = z[1] else redis.call('SREM', K.lqs, other) end
    end
  end
  if not key then break end
  popped[#popped + 1] = key
  reply[#reply + 1] = task_reply(key, wid, t)
end
if #popped == 0 then
  if min_queue == 0 then redis.call('DEL', K.wake) end
  return {'empty', '', notes, garbage}
end
redis.call('HSET', wk, 'request', request, 'current', table.concat(popped, ' '))
return reply
