-- Counters of the (project, model) pairs named, their windows pruned first; a pair with nothing
-- in its window and nothing today leaves the set of pairs (admission puts it back when it is
-- next used), so the set every status read walks holds only pairs in use.
-- KEYS: per pair, its window set, token hash and day count (for the day in ARGV[3]); then the
--   set of pairs.
-- ARGV: tz offset ms, now override ('' = Redis TIME), the day the day-count keys are for, then
--   per pair its member of the set ('project|model').
-- Returns {0, then per pair: requests in the window, tokens in the window, requests today}, or
-- {1, Redis's day} when the day-count keys are for another day (a moment around midnight when
-- the proxy's clock and Redis's disagree): the proxy names that day's keys and asks again.
local now = now_ms(ARGV[2])
local day = math.floor((now + tonumber(ARGV[1])) / 86400000)
if day ~= tonumber(ARGV[3]) then return {1, day} end
local set = KEYS[#KEYS]
local out = {0}
for p = 1, math.floor(#KEYS / 3) do
  local i = 3 * p - 2
  local rq, tk = KEYS[i], KEYS[i + 1]
  local count, sum = window(rq, tk, now)
  local today = tonumber(redis.call('GET', KEYS[i + 2]) or '0')
  out[#out + 1] = count
  out[#out + 1] = sum
  out[#out + 1] = today
  if count == 0 and today == 0 then redis.call('SREM', set, ARGV[3 + p]) end
end
return out
