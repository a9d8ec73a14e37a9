-- Waking idle workers, which block on the shared list `wake`.
-- KEYS used: wake.

-- Wake up to n idle workers blocked on the shared wake list.
local function wake(n)
  if n <= 0 then return end
  local tokens = {}
  for i = 1, math.min(n, 64) do tokens[i] = '1' end
  if redis.call('LPUSH', K.wake, unpack(tokens)) > 64 then
    redis.call('LTRIM', K.wake, 0, 63)
  end
end

