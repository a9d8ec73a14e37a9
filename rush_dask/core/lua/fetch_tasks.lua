-- fetch_tasks: read the same fields of many tasks in one call (for
-- DataFrames): one reply instead of one command per task, which is what makes
-- fetching 100,000 tasks fast. Read-only. Its one key `tasks` is not read: it
-- names the network's hash slot, so that a Redis Cluster routes the call.
--
-- KEYS: tasks
-- Families: task
-- ARGV: prefix, n_fields, fields..., task keys...
-- Reply: one list of field values per task key.

local n_fields = tonumber(ARGV[2])
local fields = {}
for i = 1, n_fields do fields[i] = ARGV[2 + i] end
local out = {}
for i = 3 + n_fields, #ARGV do
  out[#out + 1] = redis.call('HMGET', p .. 'task:' .. ARGV[i], unpack(fields))
end
return out
