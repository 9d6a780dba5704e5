-- Shared by every script: the clock and the sliding window of one (project, model) or client.
-- Every key a script touches comes in KEYS, as Redis's scripting contract (and Cluster, which
-- routes and checks by them) requires: the proxy builds the names, all starting with the
-- namespace's `{hash tag}`, so one script runs on one node (src/quota/redis/keys.rs).
-- A window has two keys: `rq`, a sorted set of admission ids scored by time, and `tk`, a hash
-- of id -> reserved tokens plus the fields `sum`, their total, `first`, the time of the set's
-- oldest entry (absent: not known, or the set is empty), and `exp`, when the pair's keys expire.
-- Each `redis.call` costs about half a microsecond of Redis's time and a number handed to one is
-- first written with '%.14g' (slower than '%d'): the scripts make few calls and pass strings.
-- The sliding window's length in ms (`limits.window_secs`): the store writes its setting into
-- this line when it loads the scripts. Window keys live at least a minute past their newest entry.
local W = 60000
local KEEP = math.max(W, 60000)

local function now_ms(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  local us = t[2] + 0
  return t[1] * 1000 + (us - us % 1000) / 1000
end

-- A whole number as Redis reads it.
local function str(n)
  return string.format('%d', n)
end

-- Drop the entries W old or older from a window (the window is (now - W, now]), `sum` being
-- its token total before. `known`: the hash exists (it has a sum), so its sum and its oldest
-- entry's time are written back (a hash gone is not made again here, without an expiry).
-- Returns the new sum and the oldest remaining entry's time (nil: the window is empty).
-- The set's oldest 4 entries are read with their times: in a steady flow the one or two to drop and
-- the new oldest are among them; more than 4 to drop are read by score.
local function prune_keys(rq, tk, now, sum, known)
  local cut = now - W
  local r = redis.call('ZRANGE', rq, '0', '3', 'WITHSCORES')
  local old, first, first_s = {}, nil, nil
  for k = 1, #r, 2 do
    local t = r[k + 1] + 0
    if t > cut then
      first, first_s = t, r[k + 1]
      break
    end
    old[#old + 1] = r[k]
  end
  if not first and #r == 8 then
    old = redis.call('ZRANGEBYSCORE', rq, '-inf', str(cut))
    local h = redis.call('ZRANGE', rq, #old, #old, 'WITHSCORES')
    if h[2] then first, first_s = h[2] + 0, h[2] end
  end
  if #old > 0 then
    for i = 1, #old, 512 do
      local j = i + 511
      if j > #old then j = #old end
      local t = redis.call('HMGET', tk, unpack(old, i, j))
      for k = 1, #t do sum = sum - (t[k] or 0) end
      redis.call('HDEL', tk, unpack(old, i, j))
    end
    redis.call('ZREMRANGEBYRANK', rq, '0', #old - 1)
  end
  if known then
    if first then
      redis.call('HSET', tk, 'sum', str(sum), 'first', first_s)
    else
      sum = 0
      redis.call('HSET', tk, 'sum', '0')
      redis.call('HDEL', tk, 'first')
    end
  end
  return sum, first
end

-- How long until `need` of a window's tokens have left it: its entries read oldest first until
-- they hold `need` (a whole window when they never do: the rest are this moment's).
local function tpm_wait(rq, tk, need, now)
  local freed = 0
  local ids = redis.call('ZRANGE', rq, 0, -1, 'WITHSCORES')
  for j = 1, #ids, 2 do
    freed = freed + (tonumber(redis.call('HGET', tk, ids[j])) or 0)
    if freed >= need then return math.max(ids[j + 1] + W - now, 1) end
  end
  return W
end

-- A window's state at `now`, pruned first when its oldest entry is W old or older (or not
-- known): its entry count, token sum, keys' expiry (`exp`, 0: none) and oldest entry's time.
local function window(rq, tk, now)
  local st = redis.call('HMGET', tk, 'sum', 'exp', 'first')
  local sum, exp, first = (st[1] or 0) + 0, (st[2] or 0) + 0, st[3]
  if first then first = first + 0 end
  if not first or first <= now - W then
    sum, first = prune_keys(rq, tk, now, sum, st[1])
  end
  return redis.call('ZCARD', rq), sum, exp, first
end

-- Entries (`ids[i]` with `toks[i]` tokens, strings) added at `now` to a window `window` read in
-- this run (count, sum, first): the set's members in one write, then in one more their tokens,
-- the new sum, the oldest entry's time when these are the first, and `exp_s` as the keys'
-- expiry when given.
local function window_add(rq, tk, now, ids, toks, count, sum, first, exp_s)
  local now_s = str(now)
  local z, h = {'ZADD', rq}, {'HSET', tk}
  for i = 1, #ids do
    z[2 * i + 1] = now_s
    z[2 * i + 2] = ids[i]
    h[2 * i + 1] = ids[i]
    h[2 * i + 2] = toks[i]
    sum = sum + toks[i]
  end
  redis.call(unpack(z))
  h[#h + 1] = 'sum'
  h[#h + 1] = str(sum)
  if count == 0 or (first and now < first) then
    h[#h + 1] = 'first'
    h[#h + 1] = now_s
  end
  if exp_s then
    h[#h + 1] = 'exp'
    h[#h + 1] = exp_s
  end
  redis.call(unpack(h))
end
