-- Unexpired Live API session slots of each project. KEYS: the projects' sets.
-- ARGV: now override ('' = Redis TIME).
local now = now_ms(ARGV[1])
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
return out
