-- Replace a reservation's tokens with the real count. ARGV: prefix, project, model, id, tokens.
local rq, tk, ts = bucket(ARGV[2], ARGV[3])
local old = redis.call('HGET', tk, ARGV[4])
if old then
  redis.call('HSET', tk, ARGV[4], ARGV[5])
  redis.call('INCRBY', ts, tonumber(ARGV[5]) - tonumber(old))
end
return 1
