-- Renew Live API session slots still held (XX: a slot whose lease passed stays freed), in
-- projects' sets or clients' in-flight sets (whose expiry is never shortened here).
-- KEYS: each slot's set. ARGV: lease ms, now override, then the session id of each key.
local now = now_ms(ARGV[2])
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[i + 2])
  if score ~= false and tonumber(score) > now then
    redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 2])
    if redis.call('PTTL', KEYS[i]) < lease * 2 then redis.call('PEXPIRE', KEYS[i], lease * 2) end
  end
end
return 1
