-- A client's own limits, checked before the pool's and reserved in the same run (admit.lua
-- calls these). Its keys are named by the client's name, never its key: `rq`/`tk`, its sliding
-- window as a pool pair's (by admission id); its day's request count; `fl`, a sorted set of its
-- requests in flight scored by lease end (a replica that dies frees its slots when the lease
-- ends); and its day's and month's micro-dollars spent and reserved.
-- KEYS from K + 1: rq, tk, day count, fl, day spend, month spend.
-- ARGV from A + 1: '1' (a client part follows; '0': none), rpm, tpm, rpd, max_concurrent,
--   daily budget, monthly budget (micro-dollars; 0 for every one of these: no limit), the
--   request's estimated cost (micro-dollars), lease ms, the client's day end and month end (ms).
-- Refusal codes: 11 rpm, 12 tpm, 13 rpd, 14 concurrency, 15 daily budget, 16 monthly budget.
local CONCURRENCY_RETRY_MS = 1000

-- The client's window as client_check read it (count, sum, oldest entry), for client_reserve.
local client_window = nil

local function client_check(K, A, tokens, now)
  local rpm, tpm, rpd = tonumber(ARGV[A + 2]), tonumber(ARGV[A + 3]), tonumber(ARGV[A + 4])
  local maxc, daily, monthly = tonumber(ARGV[A + 5]), tonumber(ARGV[A + 6]), tonumber(ARGV[A + 7])
  local cost = tonumber(ARGV[A + 8])
  local day_end, month_end = tonumber(ARGV[A + 10]), tonumber(ARGV[A + 11])
  if maxc > 0 then
    local fl = KEYS[K + 4]
    redis.call('ZREMRANGEBYSCORE', fl, '-inf', now)
    if redis.call('ZCARD', fl) >= maxc then return {14, maxc, CONCURRENCY_RETRY_MS} end
  end
  if rpd > 0 and tonumber(redis.call('GET', KEYS[K + 3]) or '0') >= rpd then
    return {13, rpd, math.max(day_end - now, 1)}
  end
  if monthly > 0 and tonumber(redis.call('GET', KEYS[K + 6]) or '0') + cost > monthly then
    return {16, monthly, math.max(month_end - now, 1)}
  end
  if daily > 0 and tonumber(redis.call('GET', KEYS[K + 5]) or '0') + cost > daily then
    return {15, daily, math.max(day_end - now, 1)}
  end
  if rpm > 0 or tpm > 0 then
    local rq, tk = KEYS[K + 1], KEYS[K + 2]
    local count, tsum, _, first = window(rq, tk, now)
    client_window = {count, tsum, first}
    if rpm > 0 and count >= rpm then
      local r = redis.call('ZRANGE', rq, count - rpm, count - rpm, 'WITHSCORES')
      return {11, rpm, math.max(tonumber(r[2]) + W - now, 1)}
    end
    if tpm > 0 and tsum + tokens > tpm then
      return {12, tpm, tpm_wait(rq, tk, tsum + tokens - tpm, now)}
    end
  end
  return nil
end

local function client_reserve(K, A, id_s, tokens_s, now)
  local rpm, tpm, rpd = tonumber(ARGV[A + 2]), tonumber(ARGV[A + 3]), tonumber(ARGV[A + 4])
  local maxc, daily, monthly = tonumber(ARGV[A + 5]), tonumber(ARGV[A + 6]), tonumber(ARGV[A + 7])
  local lease = tonumber(ARGV[A + 9])
  local day_end, month_end = tonumber(ARGV[A + 10]), tonumber(ARGV[A + 11])
  if rpm > 0 or tpm > 0 then
    local rq, tk = KEYS[K + 1], KEYS[K + 2]
    local w = client_window
    window_add(rq, tk, now, {id_s}, {tokens_s}, w[1], w[2], w[3], nil)
    redis.call('PEXPIRE', rq, 2 * KEEP)
    redis.call('PEXPIRE', tk, 2 * KEEP)
  end
  if rpd > 0 then
    local dk = KEYS[K + 3]
    if redis.call('INCR', dk) == 1 then
      redis.call('PEXPIRE', dk, math.max(day_end - now, 1) + 60000)
    end
  end
  if maxc > 0 then
    local fl = KEYS[K + 4]
    redis.call('ZADD', fl, now + lease, id_s)
    -- Never shortened: a Live session's short lease must not outrun a request's longer one.
    if redis.call('PTTL', fl) < lease + 60000 then redis.call('PEXPIRE', fl, lease + 60000) end
  end
  if daily > 0 or monthly > 0 then
    -- Kept a day past their period, so a late settlement still finds them.
    redis.call('INCRBY', KEYS[K + 5], ARGV[A + 8])
    redis.call('PEXPIRE', KEYS[K + 5], math.max(day_end - now, 1) + 86400000)
    redis.call('INCRBY', KEYS[K + 6], ARGV[A + 8])
    redis.call('PEXPIRE', KEYS[K + 6], math.max(month_end - now, 1) + 86400000)
  end
end
