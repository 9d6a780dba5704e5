-- Admin reset of the (project, model) pairs named (the proxy reads the set of pairs and picks
-- the ones the reset's filter names).
-- KEYS: per pair, its window set, token hash and day count (for the day in ARGV[4]).
-- ARGV: kind (minute|daily|tokens|all), tz offset ms, now override, the day the day-count keys
-- are for. Returns {0}, or {1, Redis's day} when the day-count keys are for another day.
local kind = ARGV[1]
local now = now_ms(ARGV[3])
local day = math.floor((now + tonumber(ARGV[2])) / 86400000)
if day ~= tonumber(ARGV[4]) then return {1, day} end
for i = 1, #KEYS, 3 do
  local rq, tk, dk = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  if kind == 'minute' or kind == 'all' then redis.call('DEL', rq, tk) end
  if kind == 'tokens' then
    -- Every admission's tokens and their sum to 0; the oldest entry's time stays.
    local ids = redis.call('HKEYS', tk)
    for j = 1, #ids do
      if ids[j] ~= 'first' then redis.call('HSET', tk, ids[j], 0) end
    end
  end
  if kind == 'daily' or kind == 'all' then redis.call('DEL', dk) end
end
return {0}
