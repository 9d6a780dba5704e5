-- Count what a Live session used, as Google reported it (never refused: it is spent): its
-- input tokens as one entry in the (project, model) window, so admissions see them against TPM
-- (not in the day's request count); for a client with limits, the same entry in its window
-- (when it has a rate limit) and the cost in its day's and month's spend.
-- KEYS: the pair's window set and token hash, the id counter, the pairs set, then for a client
--   its window set, token hash, day spend and month spend.
-- ARGV: 1 tokens, 2 'project|model', 3 now override, 4 '1' with a client ('0': none), 5 '1'
--   when the client has a rate limit, 6 cost (micro-dollars), 7 the client's day end, 8 its
--   month end (ms).
-- Returns {the client's day spend, its month spend} after it ({0, 0} without a client).
local PAIRS_CAP = 4096
local now = now_ms(ARGV[3])
local id = redis.call('INCR', KEYS[3])
if id % 1024 == 1 then redis.call('PEXPIRE', KEYS[3], 172800000) end
local id_s = tostring(id)
local rq, tk = KEYS[1], KEYS[2]
local count, sum, _, first = window(rq, tk, now)
window_add(rq, tk, now, {id_s}, {ARGV[1]}, count, sum, first, str(now + 2 * KEEP))
redis.call('PEXPIRE', rq, 2 * KEEP)
redis.call('PEXPIRE', tk, 2 * KEEP)
if redis.call('SCARD', KEYS[4]) < PAIRS_CAP then redis.call('SADD', KEYS[4], ARGV[2]) end
redis.call('PEXPIRE', KEYS[4], 172800000)
if ARGV[4] ~= '1' then return {0, 0} end
if ARGV[5] == '1' then
  local c_count, c_sum, _, c_first = window(KEYS[5], KEYS[6], now)
  window_add(KEYS[5], KEYS[6], now, {id_s}, {ARGV[1]}, c_count, c_sum, c_first, nil)
  redis.call('PEXPIRE', KEYS[5], 2 * KEEP)
  redis.call('PEXPIRE', KEYS[6], 2 * KEEP)
end
local day_end, month_end = tonumber(ARGV[7]), tonumber(ARGV[8])
local d = redis.call('INCRBY', KEYS[7], ARGV[6])
redis.call('PEXPIRE', KEYS[7], math.max(day_end - now, 1) + 86400000)
local m = redis.call('INCRBY', KEYS[8], ARGV[6])
redis.call('PEXPIRE', KEYS[8], math.max(month_end - now, 1) + 86400000)
return {d, m}
