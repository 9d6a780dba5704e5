-- Admin reset. ARGV: prefix, kind (minute|daily|tokens|all|cooldowns), tz offset ms,
-- project filter ('' = all, else '|'-joined), model filter ('' = all), kid list ('|'-joined),
-- now override.
local kind, offset = ARGV[2], tonumber(ARGV[3])
local pf, mf = ARGV[4], ARGV[5]
local function wanted(project, model)
  if pf ~= '' and not string.find('|' .. pf .. '|', '|' .. project .. '|', 1, true) then return false end
  if mf ~= '' and model ~= mf and model ~= '*' then return false end
  return true
end
local function split(pm)
  local sep = string.find(pm, '|', 1, true)
  return string.sub(pm, 1, sep - 1), string.sub(pm, sep + 1)
end
if kind == 'cooldowns' then
  for _, pm in ipairs(redis.call('SMEMBERS', P .. ':cds')) do
    local project, model = split(pm)
    if wanted(project, model) then
      redis.call('DEL', cooldown_key(project, model))
      redis.call('SREM', P .. ':cds', pm)
    end
  end
  if ARGV[6] ~= '' then
    for kid in string.gmatch(ARGV[6], '[^|]+') do redis.call('DEL', P .. ':dis:' .. kid) end
  end
  return 1
end
local now = now_ms(ARGV[7])
local day = math.floor((now + offset) / 86400000)
for _, pm in ipairs(redis.call('SMEMBERS', P .. ':pairs')) do
  local project, model = split(pm)
  if wanted(project, model) then
    local rq, tk = bucket(project, model)
    if kind == 'minute' or kind == 'all' then redis.call('DEL', rq, tk) end
    if kind == 'tokens' then
      local ids = redis.call('HKEYS', tk)
      for i = 1, #ids do redis.call('HSET', tk, ids[i], 0) end
    end
    if kind == 'daily' or kind == 'all' then redis.call('DEL', day_key(project, model, day)) end
  end
end
return 1
