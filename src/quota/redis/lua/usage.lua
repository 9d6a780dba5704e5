-- Counters of the (project, model) pairs named, their windows pruned first.
-- KEYS: per pair, its window set, token hash and day count (for the day in ARGV[3]).
-- ARGV: tz offset ms, now override ('' = Redis TIME), the day the day-count keys are for.
-- Returns {0, then per pair: requests in the window, tokens in the window, requests today}, or
-- {1, Redis's day} when the day-count keys are for another day (a moment around midnight when
-- the proxy's clock and Redis's disagree): the proxy names that day's keys and asks again.
local now = now_ms(ARGV[2])
local day = math.floor((now + tonumber(ARGV[1])) / 86400000)
if day ~= tonumber(ARGV[3]) then return {1, day} end
local cut = tostring(now - W)
local out = {0}
for i = 1, #KEYS, 3 do
  local rq, tk = KEYS[i], KEYS[i + 1]
  prune_keys(rq, tk, cut)
  out[#out + 1] = redis.call('ZCARD', rq)
  out[#out + 1] = tonumber(redis.call('HGET', tk, 'sum') or '0')
  out[#out + 1] = tonumber(redis.call('GET', KEYS[i + 2]) or '0')
end
return out
