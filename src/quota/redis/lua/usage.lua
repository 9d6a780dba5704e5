-- Counters of every (project, model) seen in the last two days.
-- ARGV: prefix, tz offset ms, now override. Returns a flat list: project|model, rpm, tokens, rpd.
local now = now_ms(ARGV[3])
local day = math.floor((now + tonumber(ARGV[2])) / 86400000)
local out = {}
for _, pm in ipairs(redis.call('SMEMBERS', P .. ':pairs')) do
  local sep = string.find(pm, '|', 1, true)
  local project, model = string.sub(pm, 1, sep - 1), string.sub(pm, sep + 1)
  local rq, tk = prune(project, model, now)
  local c = redis.call('ZCARD', rq)
  local t = tonumber(redis.call('HGET', tk, 'sum') or '0')
  local d = tonumber(redis.call('GET', day_key(project, model, day)) or '0')
  if c > 0 or t > 0 or d > 0 then
    out[#out + 1] = pm; out[#out + 1] = c; out[#out + 1] = t; out[#out + 1] = d
  end
end
return out
