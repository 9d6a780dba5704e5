-- Hold a (project, model) for ms milliseconds; the longest hold wins.
-- ARGV: prefix, project, model, ms, reason, now override ('' = Redis TIME).
local k = cooldown_key(ARGV[2], ARGV[3])
local ms = tonumber(ARGV[4])
if redis.call('PTTL', k) < ms then
  redis.call('SET', k, (now_ms(ARGV[6]) + ms) .. '|' .. ARGV[5], 'PX', ms)
end
redis.call('SADD', P .. ':cds', ARGV[2] .. '|' .. ARGV[3])
redis.call('PEXPIRE', P .. ':cds', 172800000)
return 1
