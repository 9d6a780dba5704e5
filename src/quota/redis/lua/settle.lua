-- Replace reservations' tokens with the real counts, many at once.
-- ARGV: prefix, then (project, model, id, tokens) per reservation.
local n = 0
for i = 2, #ARGV - 3, 4 do
  local rq, tk = bucket(ARGV[i], ARGV[i + 1])
  local old = redis.call('HGET', tk, ARGV[i + 2])
  if old then
    redis.call('HSET', tk, ARGV[i + 2], ARGV[i + 3])
    redis.call('HINCRBY', tk, 'sum', tonumber(ARGV[i + 3]) - tonumber(old))
    n = n + 1
  end
end
return n
