-- Hold a (project, model) for ms milliseconds; the longest hold wins.
-- ARGV: prefix, project, model, ms, reason.
local k = P .. ':cd:' .. ARGV[2] .. ':' .. ARGV[3]
if redis.call('PTTL', k) < tonumber(ARGV[4]) then
  redis.call('SET', k, ARGV[5], 'PX', ARGV[4])
end
redis.call('SADD', P .. ':cds', ARGV[2] .. '|' .. ARGV[3])
redis.call('PEXPIRE', P .. ':cds', 172800000)
return 1
