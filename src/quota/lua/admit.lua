-- Choose a key whose project has room and reserve one request, `tokens` input tokens and one
-- daily request, atomically.
-- ARGV: prefix, model, tokens, strategy (h|o), rotation, tz offset ms, next midnight ms,
--       now override ('' = Redis TIME), n, then n x (kid, project, rpm, tpm, rpd).
-- Returns {1, candidate index (0-based), id, remaining requests, remaining tokens}
--      or {0, limit code (1 rpm, 2 tpm, 3 rpd), limit value, retry after ms}
--      or {2, earliest cooldown end in ms or -1 when every key is disabled}.
local model = ARGV[2]
local tokens = tonumber(ARGV[3])
local strategy = ARGV[4]
local rotation = tonumber(ARGV[5])
local offset = tonumber(ARGV[6])
local next_mid = tonumber(ARGV[7])
local now = now_ms(ARGV[8])
local n = tonumber(ARGV[9])
local day = math.floor((now + offset) / 86400000)
if next_mid <= now then next_mid = (day + 1) * 86400000 - offset end
-- Numbers used in key names and arguments, turned into strings once (each conversion costs
-- about as much as a command).
local day_s, cut = tostring(day), tostring(now - 60000)

-- One MGET for every disabled-key flag, then every cooldown (this model, and the whole project).
-- Projects are known only after the flags are read, so cooldowns of every candidate's project
-- are fetched; keys of one project share them.
local flag_keys, seen, names = {}, {}, {}
for i = 0, n - 1 do
  flag_keys[#flag_keys + 1] = P .. ':dis:' .. ARGV[10 + i * 5]
  local project = ARGV[11 + i * 5]
  if not seen[project] then seen[project] = true; names[#names + 1] = project end
end
for p = 1, #names do
  flag_keys[#flag_keys + 1] = cooldown_key(names[p], model)
  flag_keys[#flag_keys + 1] = cooldown_key(names[p], '*')
end
local flags = redis.call('MGET', unpack(flag_keys))

local projects, by_name = {}, {}
for i = 0, n - 1 do
  local b = 10 + i * 5
  local project = ARGV[b + 1]
  if not flags[i + 1] then
    local e = by_name[project]
    if not e then
      e = {name = project, keys = {}, rpm = tonumber(ARGV[b + 2]), tpm = tonumber(ARGV[b + 3]),
           rpd = tonumber(ARGV[b + 4])}
      projects[#projects + 1] = e
      by_name[project] = e
    end
    e.keys[#e.keys + 1] = i
  end
end
if #projects == 0 then return {2, -1} end
local function held_ms(v)
  if not v then return 0 end
  local until_ms = tonumber(string.match(v, '^(%d+)')) or 0
  return until_ms - now
end
local cd_at = {}
for p = 1, #names do cd_at[names[p]] = n + p * 2 - 1 end

-- Projects not on hold: prune their windows, then read every day count in one MGET.
local hold, live, day_keys = nil, {}, {}
for pos = 1, #projects do
  local e = projects[pos]
  local at = cd_at[e.name]
  local cd = math.max(held_ms(flags[at]), held_ms(flags[at + 1]))
  if cd > 0 then
    if not hold or cd < hold then hold = cd end
  else
    live[#live + 1] = e
    day_keys[#day_keys + 1] = day_key(e.name, model, day_s)
  end
end
local days = {}
if #live > 0 then days = redis.call('MGET', unpack(day_keys)) end

local refused, open = nil, {}
for pos = 1, #live do
  local e = live[pos]
  local rq, tk = prune(e.name, model, now, cut)
  local count = redis.call('ZCARD', rq)
  local st = redis.call('HMGET', tk, 'sum', 'exp')
  local tsum = tonumber(st[1] or '0')
  e.exp = tonumber(st[2] or '0')
  local dcount = tonumber(days[pos] or '0')
  local why = nil
  if dcount >= e.rpd then
    why = {3, e.rpd, math.max(next_mid - now, 1)}
  else
    if count >= e.rpm then
      local r = redis.call('ZRANGE', rq, count - e.rpm, count - e.rpm, 'WITHSCORES')
      why = {1, e.rpm, math.max(tonumber(r[2]) + 60000 - now, 1)}
    end
    if tsum + tokens > e.tpm then
      local need, freed, wait = tsum + tokens - e.tpm, 0, 60000
      local ids = redis.call('ZRANGE', rq, 0, -1, 'WITHSCORES')
      for j = 1, #ids, 2 do
        freed = freed + (tonumber(redis.call('HGET', tk, ids[j])) or 0)
        if freed >= need then wait = math.max(tonumber(ids[j + 1]) + 60000 - now, 1); break end
      end
      if not why or wait > why[3] then why = {2, e.tpm, wait} end
    end
  end
  if why then
    if not refused or why[3] < refused[3] then refused = why end
  else
    local h = math.min((e.rpm - count - 1) / e.rpm, (e.tpm - tsum - tokens) / e.tpm,
                       (e.rpd - dcount - 1) / e.rpd)
    open[#open + 1] = {e = e, h = h, count = count, tsum = tsum}
  end
end

if #open == 0 then
  if refused then
    if hold and hold < refused[3] then refused[3] = hold end
    return {0, refused[1], refused[2], refused[3]}
  end
  return {2, hold or -1}
end

-- Most headroom first, ties in turn from `rotation`; or the first open project in order.
local best
if strategy == 'o' then
  best = open[1]
else
  local start = rotation % #open
  for k = 0, #open - 1 do
    local c = open[(start + k) % #open + 1]
    if not best or c.h > best.h then best = c end
  end
end
local e = best.e
local cand = e.keys[1]
if strategy ~= 'o' then cand = e.keys[(rotation % #e.keys) + 1] end

local rq, tk = bucket(e.name, model)
local seq = P .. ':seq'
local id = redis.call('INCR', seq)
local pairs_key = P .. ':pairs'
-- The id counter's expiry is refreshed now and then, not on every call (a new counter starts
-- at 1, so it gets one at once).
if id % 1024 == 1 then redis.call('PEXPIRE', seq, 172800000) end
local id_s = tostring(id)
redis.call('ZADD', rq, now, id_s)
redis.call('HSET', tk, id_s, ARGV[3])
redis.call('HINCRBY', tk, 'sum', ARGV[3])
-- The window's keys must outlive their newest entry by 60 s: they expire 120 s after a
-- refresh, refreshed when 60 s or less of that is left (about once a minute, not per call), or
-- when the sorted set was empty (Redis deleted it; ZADD just made it anew, without expiry).
local dk = day_key(e.name, model, day_s)
local new_day = redis.call('INCR', dk) == 1
if new_day then redis.call('PEXPIRE', dk, math.max(next_mid - now, 1) + 60000) end
if new_day or best.count == 0 or e.exp <= now + 60000 then
  redis.call('HSET', tk, 'exp', now + 120000)
  redis.call('PEXPIRE', rq, 120000)
  redis.call('PEXPIRE', tk, 120000)
  -- The status page and admin resets find pairs in this set: keep this one in it (the set
  -- may have expired or been evicted since the pair's day began).
  redis.call('SADD', pairs_key, e.name .. '|' .. model)
  redis.call('PEXPIRE', pairs_key, 172800000)
end
return {1, cand, id, e.rpm - best.count - 1, e.tpm - best.tsum - tokens}
