-- A finished job's results file, kept to be costed when downloaded: at most `cap` per project
-- (the ones expiring first go first), each with its expiry in its JSON (`u`).
-- KEYS: the batch hash. ARGV: the field (`file:files/ID`), its JSON, cap, its project,
--   now override ('' = Redis TIME).
local now = now_ms(ARGV[5])
local cap = math.max(tonumber(ARGV[3]), 1)
local all = redis.call('HGETALL', KEYS[1])
local mine = {}
for i = 1, #all, 2 do
  local field = all[i]
  if string.sub(field, 1, 5) == 'file:' and field ~= ARGV[1] then
    local ok, j = pcall(cjson.decode, all[i + 1])
    if not ok or type(j) ~= 'table' or (j.u and tonumber(j.u) <= now) then
      redis.call('HDEL', KEYS[1], field)
    elseif j.p == ARGV[4] then
      mine[#mine + 1] = {tonumber(j.u) or 0, field}
    end
  end
end
table.sort(mine, function(a, b) return a[1] < b[1] end)
for i = 1, #mine - cap + 1 do
  redis.call('HDEL', KEYS[1], mine[i][2])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
