-- Hold a (project, model) for ms milliseconds; the longest hold wins.
-- KEYS: the pair's cooldown key ("until_ms|reason", expiring at until_ms), the set of held pairs.
-- ARGV: ms, reason, now override ('' = Redis TIME), 'project|model'.
local k = KEYS[1]
local ms = tonumber(ARGV[1])
if redis.call('PTTL', k) < ms then
  redis.call('SET', k, (now_ms(ARGV[3]) + ms) .. '|' .. ARGV[2], 'PX', ms)
end
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], 172800000)
return 1
