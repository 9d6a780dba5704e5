-- Move a client's budget use by a signed number of micro-dollars (a batch job's results cost
-- less or more than its reservation): in its day's and month's keys when they still exist (a
-- period long over stays gone).
-- KEYS: its day's spend, its month's spend. ARGV: the delta.
local delta = tonumber(ARGV[1])
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, delta) end
end
return 1
