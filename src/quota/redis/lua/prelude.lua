-- Shared by every script: the clock and the sliding-window pruning of one (project, model).
-- All keys start with ARGV[1], a prefix holding one {hash tag}, so a script touches one slot.
-- A (project, model) has two keys: `rq`, a sorted set of admission ids scored by time, and
-- `tk`, a hash of id -> reserved tokens plus the fields `sum`, their total, and `exp`, when the
-- pair's keys expire. The admission script gets these names ready-made from
-- `RedisStore::admit` (src/quota/redis.rs), which must build them exactly as below.
local P = ARGV[1]
-- The sliding window's length in ms (`limits.window_secs`): the store writes its setting into
-- this line when it loads the scripts. Window keys live at least a minute past their newest entry.
local W = 60000
local KEEP = math.max(W, 60000)

local function now_ms(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function bucket(project, model)
  local b = P .. ':' .. project .. ':' .. model
  return b .. ':rq', b .. ':tk'
end

-- Drop admissions W old or older from a window; the window is (now - W, now]. `cut` is
-- the string of now - W (turning a number into a string costs more than a command).
local function prune_keys(rq, tk, cut)
  local old = redis.call('ZRANGEBYSCORE', rq, '-inf', cut)
  if #old > 0 then
    local sum = 0
    for i = 1, #old do
      sum = sum + (tonumber(redis.call('HGET', tk, old[i])) or 0)
      redis.call('HDEL', tk, old[i])
    end
    redis.call('ZREMRANGEBYSCORE', rq, '-inf', cut)
    redis.call('HINCRBY', tk, 'sum', -sum)
  end
end

local function prune(project, model, now)
  local rq, tk = bucket(project, model)
  prune_keys(rq, tk, tostring(now - W))
  return rq, tk
end

local function day_key(project, model, day)
  return P .. ':' .. project .. ':' .. model .. ':day:' .. day
end

-- A cooldown key holds "until_ms|reason" and expires at until_ms.
local function cooldown_key(project, model)
  return P .. ':cd:' .. project .. ':' .. model
end
