-- What a client holds, and what goes when its lease expires: every controller
-- renews its lease (a score in the sorted set clients), and records each
-- reference it holds on a node in its hash crefs:<client> (task key -> count).
-- A client that stops renewing (it died, or hangs) is reaped: each of its
-- references is dropped as if it had released it.
-- KEYS used: those of nodes and reap, plus clients.
-- Families: crefs, creq, fdone, and those of reap.
--@include "reap"

-- Drop one reference on a node. A node that nobody needs any more goes: a
-- finished or failed one is deleted; an unfinished one is cancelled (nothing
-- would ever read it), which drops its own references on its inputs in turn,
-- unless it was fired and forgotten (field keep): it runs, then goes.
local function release_node(key)
  local stack = {key}
  while #stack > 0 do
    local k = table.remove(stack)
    local tk = p .. 'task:' .. k
    local f = redis.call('HMGET', tk, 'state', 'graph', 'worker_id', 'deps', 'keep')
    if f[1] and redis.call('HINCRBY', tk, 'refs', -1) <= 0 then
      local done = f[1] == 'finished' or f[1] == 'failed'
      if not done and not f[5] then
        if f[1] == 'queued' then dequeue(k) end
        if f[1] == 'running' then
          redis.call('SREM', K.running, k)
          if f[3] then redis.call('SREM', p .. 'held:' .. f[3], k) end
        end
        for _, dep in ipairs(split(f[4])) do stack[#stack + 1] = dep end
      end
      if done or not f[5] then drop_node(k, f[2]) end
    end
  end
end

-- Apply a client's write once: false if request `rid` of client `cid` was
-- applied before (its reply was lost and the client sent it again).
local function first_time(cid, rid, t)
  if rid == '' then return true end
  local ck = p .. 'creq:' .. cid
  if redis.call('ZADD', ck, 'NX', t, rid) == 0 then return false end
  redis.call('ZREMRANGEBYSCORE', ck, '-inf', tonumber(t) - 3600)  -- a repeat comes within seconds
  return true
end

-- Record (n = 1) or forget (n = -1) one reference of client `cid` on `key`.
-- Returns the count left: below 0 if there was none to forget.
local function count_ref(cid, key, n)
  local ck = p .. 'crefs:' .. cid
  local left = redis.call('HINCRBY', ck, key, n)
  if left <= 0 then redis.call('HDEL', ck, key) end
  return left
end

-- A client holds something from now on: give it a lease if it has none yet
-- (its first renewal may come after its first hold, and it may die between).
local function ensure_client(cid, t, lease)
  redis.call('ZADD', K.clients, 'NX', tonumber(t) + lease, cid)
end

-- Drop up to `batch` of the references that client `cid` holds; once none is
-- left, forget the client. Returns true when nothing of it is left.
local function reap_client(cid, batch)
  local ck = p .. 'crefs:' .. cid
  local held = redis.call('HRANDFIELD', ck, batch, 'WITHVALUES')
  for i = 1, #held, 2 do
    for _ = 1, tonumber(held[i + 1]) do release_node(held[i]) end
    redis.call('HDEL', ck, held[i])
  end
  if redis.call('EXISTS', ck) == 1 then return false end
  redis.call('ZREM', K.clients, cid)
  redis.call('DEL', p .. 'creq:' .. cid, p .. 'fdone:' .. cid)
  return true
end

-- Reap part of the client whose lease expired first, if any.
local function reap_expired_client(t, batch)
  local cid = redis.call('ZRANGEBYSCORE', K.clients, '-inf', t, 'LIMIT', 0, 1)[1]
  if cid then reap_client(cid, batch) end
end
