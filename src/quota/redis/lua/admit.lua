-- Choose a key whose project has room and reserve one request, `tokens` input tokens and one
-- daily request, atomically.
--
-- KEYS, with n keys and m projects (in order of first appearance): n disabled-flag keys, then
--   m x (cooldown key for this model, for '*'), then m day-count keys (for the day in ARGV[7]),
--   then m x (window set, token hash), then the id counter key and the pairs set key.
-- ARGV: 1 tokens, 2 strategy (h|o), 3 rotation, 4 tz offset ms, 5 next midnight ms (0: work it
--   out here), 6 now override ('' = Redis TIME), 7 the day the day-count keys are for, 8 n, 9 m,
--   then n project numbers (1-based, per key), then m x (rpm, tpm, rpd, 'project|model'), then
--   the client part (client.lua: '0' when there is none).
-- With a client part, its keys follow the pairs set key in KEYS (client.lua).
-- Returns {1, candidate index (0-based), id, remaining requests, remaining tokens}
--      or {0, limit code (1 rpm, 2 tpm, 3 rpd), limit value, retry after ms}
--      or {4, client limit code (client.lua), limit value, retry after ms}: the client is at
--         one of its own limits; nothing was written
--      or {2, earliest cooldown end in ms or -1 when every key is disabled}
--      or {3, Redis's day}: the day-count keys are for another day (a moment around midnight
--         when the proxy's clock and Redis's disagree), so the proxy names that day's and asks
--         again; nothing was written.
-- Most members of the pairs set (the store writes its setting into this line when it loads
-- the script): model names are the client's choice, and every status read, /metrics scrape
-- and alert evaluation walks the set. A pair past it is still counted, only not listed.
local PAIRS_CAP = 4096
-- Numbers are read by arithmetic (`ARGV[i] + 0`): the string is converted once, where
-- `tonumber` is a function call that converts it twice.
local tokens = ARGV[1] + 0
local strategy = ARGV[2]
local rotation = ARGV[3] + 0
local offset = ARGV[4] + 0
local next_mid = ARGV[5] + 0
local now = now_ms(ARGV[6])
local n, m = ARGV[8] + 0, ARGV[9] + 0
if n == 0 then return {2, -1} end
local day = (now + offset) / 86400000
day = day - day % 1
if day ~= ARGV[7] + 0 then return {3, day} end
if next_mid <= now then next_mid = (day + 1) * 86400000 - offset end
local DAY, WIN, OF, PJ, CA = layout(n, m)
-- The client part: its arguments after the projects', its keys after the pairs set's.
local CK = WIN + 2 * m + 2
local with_client = ARGV[CA + 1] == '1'
if with_client then
  local why = client_check(CK, CA, tokens, now)
  if why then return {4, why[1], why[2], why[3]} end
end

-- One MGET for every disabled flag, every cooldown and every day count (contiguous in KEYS):
-- `flags[DAY + p]` is project p's day count.
local flags = redis.call('MGET', unpack(KEYS, 1, DAY + m))
local order, enabled, project = enabled_projects(flags, n, OF)
if #order == 0 then return {2, -1} end

local hold, refused = nil, nil
local open, heads, counts, sums, exps, firsts = {}, {}, {}, {}, {}, {}
for o = 1, #order do
  local p = order[o]
  local b = PJ + (p - 1) * 4
  local cd = project_hold(flags, n, p, now)
  if cd > 0 then
    if not hold or cd < hold then hold = cd end
  else
    local rpm, tpm, rpd = ARGV[b + 1] + 0, ARGV[b + 2] + 0, ARGV[b + 3] + 0
    local rq, tk = KEYS[WIN + 2 * p - 1], KEYS[WIN + 2 * p]
    local count, tsum, exp, first = window(rq, tk, now)
    local dcount = (flags[DAY + p] or 0) + 0
    local why = refusal(rq, tk, count, count, tsum, dcount, tokens, rpm, tpm, rpd, now, next_mid)
    if why then
      if not refused or why[3] < refused[3] then refused = why end
    else
      open[#open + 1] = p
      heads[p] = headroom(count, tsum, dcount, tokens, rpm, tpm, rpd)
      counts[p], sums[p], exps[p], firsts[p] = count, tsum, exp, first
    end
  end
end

if #open == 0 then return closed(refused, hold) end

local best, cand = choose(open, heads, rotation, strategy, enabled, project, n)

local b = PJ + (best - 1) * 4
local rpm, tpm = ARGV[b + 1] + 0, ARGV[b + 2] + 0
local rq, tk = KEYS[WIN + 2 * best - 1], KEYS[WIN + 2 * best]
local seq, pairs_key = KEYS[WIN + 2 * m + 1], KEYS[WIN + 2 * m + 2]
local id = redis.call('INCR', seq)
-- The id counter's expiry is refreshed now and then, not on every call (a new counter starts
-- at 1, so it gets one at once).
if id % 1024 == 1 then redis.call('PEXPIRE', seq, 172800000) end
local id_s = str(id)
-- The window's keys must outlive their newest entry by KEEP (W, at least 60 s): they expire
-- 2 KEEP after a refresh, refreshed when KEEP or less of that is left (about once a minute, not
-- per call), or when the sorted set was empty (Redis deleted it; ZADD makes it anew, without
-- expiry), or on the pair's first admission of the day.
local dk = KEYS[DAY + best]
local new_day = redis.call('INCR', dk) == 1
if new_day then redis.call('PEXPIRE', dk, math.max(next_mid - now, 1) + 60000) end
local refresh = new_day or counts[best] == 0 or exps[best] <= now + KEEP
window_add(rq, tk, now, {id_s}, {ARGV[1]}, counts[best], sums[best], firsts[best],
           refresh and str(now + 2 * KEEP) or nil)
if with_client then client_reserve(CK, CA, id_s, ARGV[1], now) end
if refresh then
  redis.call('PEXPIRE', rq, 2 * KEEP)
  redis.call('PEXPIRE', tk, 2 * KEEP)
  -- The status page and admin resets find pairs in this set: keep this one in it (the set
  -- may have expired or been evicted since the pair's day began, or the usage scan removed the
  -- pair while it was idle), while the set has room; a member already in it stays.
  if redis.call('SCARD', pairs_key) < PAIRS_CAP then
    redis.call('SADD', pairs_key, ARGV[b + 4])
  end
  redis.call('PEXPIRE', pairs_key, 172800000)
end
return {1, cand, id, rpm - counts[best] - 1, tpm - sums[best] - tokens}
