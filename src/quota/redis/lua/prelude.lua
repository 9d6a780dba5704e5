-- Shared by every script: the clock and the sliding-window pruning of one (project, model).
-- Every key a script touches comes in KEYS, as Redis's scripting contract (and Cluster, which
-- routes and checks by them) requires: the proxy builds the names, all starting with the
-- namespace's `{hash tag}`, so one script runs on one node (src/quota/redis/keys.rs).
-- A (project, model) has two keys: `rq`, a sorted set of admission ids scored by time, and
-- `tk`, a hash of id -> reserved tokens plus the fields `sum`, their total, and `exp`, when the
-- pair's keys expire.
-- The sliding window's length in ms (`limits.window_secs`): the store writes its setting into
-- this line when it loads the scripts. Window keys live at least a minute past their newest entry.
local W = 60000
local KEEP = math.max(W, 60000)

local function now_ms(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
