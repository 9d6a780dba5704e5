-- Take a Live API session slot in a project when fewer than the limit are held.
-- KEYS: the project's sorted set of session ids, scored by lease end (ms).
-- ARGV: session id, limit, lease ms, now override ('' = Redis TIME).
local now = now_ms(ARGV[4])
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
