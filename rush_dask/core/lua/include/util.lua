-- Small helpers every script may use: the server clock and list splitting.
-- Touches no key.

-- Server time as "seconds.micros": one clock for every host of the network.
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end


-- Space-separated task keys (fields deps/dependents of graph nodes) as a list.
local function split(text)
  local out = {}
  if text then for key in string.gmatch(text, '%S+') do out[#out + 1] = key end end
  return out
end

