-- Replace reservations' tokens with the real counts, many at once, and add the usage sums
-- riding along (the ledger's per-minute and per-hour buckets).
-- KEYS: the ledger's `since` key, this ledger batch's `done` key, the `late` counter, then t
-- token hashes (one per (project, model) settled), then c x (a client's token hash, its
-- in-flight set, its day's and month's spend: client.lua), then one hash per ledger bucket.
-- ARGV: t, n, then (token hash number 1..t, id, tokens) per reservation; then c, and c x (id,
-- tokens, cost delta in micro-dollars) per client part; then, with ledger
-- hashes: late (0/1), per hash: ttl seconds, field count, (field, packed counters) pairs; then
-- the `since` value. A ledger batch is applied once: its `done` key says it was.
local t = tonumber(ARGV[1])
local n = 0
local a = 3
for _ = 1, tonumber(ARGV[2]) do
  local tk = KEYS[3 + tonumber(ARGV[a])]
  local old = redis.call('HGET', tk, ARGV[a + 1])
  if old then
    redis.call('HSET', tk, ARGV[a + 1], ARGV[a + 2])
    redis.call('HINCRBY', tk, 'sum', tonumber(ARGV[a + 2]) - tonumber(old))
    n = n + 1
  end
  a = a + 3
end

-- Client parts: its tokens settled as the pool's, its slot freed, its budgets moved from the
-- estimate to the real cost (a spend key already gone, its period long over, stays gone).
local c = tonumber(ARGV[a])
a = a + 1
for j = 1, c do
  local base = 3 + t + 4 * (j - 1)
  local tk, fl, sd, sm = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4]
  local id, tokens, delta = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local old = redis.call('HGET', tk, id)
  if old then
    redis.call('HSET', tk, id, tokens)
    redis.call('HINCRBY', tk, 'sum', tonumber(tokens) - tonumber(old))
  end
  redis.call('ZREM', fl, id)
  if delta ~= 0 then
    for _, k in ipairs({sd, sm}) do
      if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, delta) end
    end
  end
  a = a + 3
end
local LEDGER = 4 + t + 4 * c

-- "1 0 2" + "1 1 0" = "2 1 2": element-wise, a missing field counting as zeros.
local function add_packed(key, field, packed)
  local old = redis.call('HGET', key, field)
  if not old then
    redis.call('HSET', key, field, packed)
    return
  end
  local prev = {}
  for v in string.gmatch(old, '%d+') do prev[#prev + 1] = tonumber(v) end
  local out = {}
  for v in string.gmatch(packed, '%d+') do
    local i = #out + 1
    out[i] = string.format('%d', (prev[i] or 0) + tonumber(v))
  end
  for i = #out + 1, #prev do out[i] = string.format('%d', prev[i]) end
  redis.call('HSET', key, field, table.concat(out, ' '))
end

if #KEYS >= LEDGER and redis.call('SET', KEYS[2], '1', 'NX', 'EX', 3600) then
  local late = ARGV[a] == '1'
  a = a + 1
  for k = LEDGER, #KEYS do
    local ttl, count = ARGV[a], tonumber(ARGV[a + 1])
    a = a + 2
    for _ = 1, count do
      add_packed(KEYS[k], ARGV[a], ARGV[a + 1])
      a = a + 2
    end
    redis.call('EXPIRE', KEYS[k], ttl)
  end
  redis.call('SET', KEYS[1], ARGV[a], 'NX')
  if late then
    redis.call('INCR', KEYS[3])
  end
end
return n
