-- Several admissions asking for the same model and candidates, none with a client part (an
-- admission with one goes alone, admit.lua): those that met while one admission's script was
-- running, gathered by the proxy (src/quota/redis/gather.rs). Each is decided in turn as admit.lua
-- would decide it, coming alone after the ones before it: the same limits, holds, choice of
-- project and key, refusals and retry times. What changes is the cost: the clock, the flags and
-- each project's window are read once, and the writes are made together (one INCRBY of the id
-- counter, per project one ZADD, one HSET and one INCRBY of the day count).
--
-- KEYS and ARGV as admit.lua's without a client part (its '0' in ARGV), then the admissions
--   after the first (whose tokens and rotation are ARGV 1 and 3): their count e, then
--   e x (tokens, rotation).
-- Returns one answer per admission, in order, each as admit.lua answers one; every one of
--   them {3, Redis's day} when the day-count keys are for another day (nothing was written).
-- Most members of the pairs set (the store writes its setting into this line when it loads
-- the script): model names are the client's choice, and every status read, /metrics scrape
-- and alert evaluation walks the set. A pair past it is still counted, only not listed.
local PAIRS_CAP = 4096
-- Numbers are read by arithmetic (`ARGV[i] + 0`): the string is converted once, where
-- `tonumber` is a function call that converts it twice.
local strategy = ARGV[2]
local offset = ARGV[4] + 0
local next_mid = ARGV[5] + 0
local now = now_ms(ARGV[6])
local n, m = ARGV[8] + 0, ARGV[9] + 0
local DAY, WIN, OF, PJ, CA = layout(n, m)
-- The admissions: the first in ARGV 1 and 3, the further ones after the client part's '0'.
local toks_s, rots = {ARGV[1]}, {ARGV[3] + 0}
for a = 1, ARGV[CA + 2] + 0 do
  toks_s[a + 1] = ARGV[CA + 1 + 2 * a]
  rots[a + 1] = ARGV[CA + 2 + 2 * a] + 0
end
local k = #toks_s
-- The same answer for every admission.
local function answer(one)
  local all = {}
  for a = 1, k do all[a] = one end
  return all
end

if n == 0 then return answer({2, -1}) end
local day = (now + offset) / 86400000
day = day - day % 1
if day ~= ARGV[7] + 0 then return answer({3, day}) end
if next_mid <= now then next_mid = (day + 1) * 86400000 - offset end

-- One MGET for every disabled flag, every cooldown and every day count (contiguous in KEYS):
-- `flags[DAY + p]` is project p's day count.
local flags = redis.call('MGET', unpack(KEYS, 1, DAY + m))
local order, enabled, project = enabled_projects(flags, n, OF)
if #order == 0 then return answer({2, -1}) end

-- Each project not held: its limits and its window as it stands, read once. `counts`, `sums`
-- and `days` then grow with each admission of this run, whose entries are `added` (newest,
-- at `now`; not in the sorted set until the end).
local hold = nil
local live, rpms, tpms, rpds = {}, {}, {}, {}
local counts, sums, exps, firsts, days, added, sum0 = {}, {}, {}, {}, {}, {}, {}
for o = 1, #order do
  local p = order[o]
  local b = PJ + (p - 1) * 4
  local cd = project_hold(flags, n, p, now)
  if cd > 0 then
    if not hold or cd < hold then hold = cd end
  else
    live[#live + 1] = p
    rpms[p], tpms[p], rpds[p] = ARGV[b + 1] + 0, ARGV[b + 2] + 0, ARGV[b + 3] + 0
    counts[p], sums[p], exps[p], firsts[p] = window(KEYS[WIN + 2 * p - 1], KEYS[WIN + 2 * p], now)
    sum0[p] = sums[p]
    days[p] = (flags[DAY + p] or 0) + 0
    added[p] = {}
  end
end

local answers, admitted = {}, {}
for a = 1, k do
  local tokens, rotation = toks_s[a] + 0, rots[a]
  local refused, open, heads = nil, {}, {}
  for o = 1, #live do
    local p = live[o]
    local count, tsum, dcount = counts[p], sums[p], days[p]
    local rpm, tpm, rpd = rpms[p], tpms[p], rpds[p]
    local why = refusal(KEYS[WIN + 2 * p - 1], KEYS[WIN + 2 * p], count, count - #added[p], tsum,
                        dcount, tokens, rpm, tpm, rpd, now, next_mid)
    if why then
      if not refused or why[3] < refused[3] then refused = why end
    else
      open[#open + 1] = p
      heads[p] = headroom(count, tsum, dcount, tokens, rpm, tpm, rpd)
    end
  end
  if #open == 0 then
    answers[a] = closed(refused, hold)
  else
    local best, cand = choose(open, heads, rotation, strategy, enabled, project, n)
    -- The id is filled in below, once the run knows how many it admitted.
    answers[a] = {1, cand, 0, rpms[best] - counts[best] - 1, tpms[best] - sums[best] - tokens}
    admitted[#admitted + 1] = a
    local list = added[best]
    list[#list + 1] = a
    counts[best] = counts[best] + 1
    sums[best] = sums[best] + tokens
    days[best] = days[best] + 1
  end
end

if #admitted > 0 then
  local seq, pairs_key = KEYS[WIN + 2 * m + 1], KEYS[WIN + 2 * m + 2]
  local last = redis.call('INCRBY', seq, #admitted)
  local first_id = last - #admitted + 1
  -- The id counter's expiry is refreshed now and then, not on every call: when the ids given
  -- pass one of 1, 1025, 2049... (a new counter starts at 1, so it gets one at once).
  local r = (first_id - 1) % 1024
  if r == 0 or r + #admitted > 1024 then redis.call('PEXPIRE', seq, 172800000) end
  for j = 1, #admitted do answers[admitted[j]][3] = first_id + j - 1 end
  for o = 1, #live do
    local p = live[o]
    local list = added[p]
    if #list > 0 then
      local rq, tk = KEYS[WIN + 2 * p - 1], KEYS[WIN + 2 * p]
      local ids, toks = {}, {}
      for j = 1, #list do
        ids[j] = str(answers[list[j]][3])
        toks[j] = toks_s[list[j]]
      end
      -- The window's keys must outlive their newest entry by KEEP (W, at least 60 s): they
      -- expire 2 KEEP after a refresh, refreshed when KEEP or less of that is left (about once
      -- a minute, not per call), or when the sorted set was empty (Redis deleted it; ZADD makes
      -- it anew, without expiry), or on the pair's first admission of the day.
      local dk = KEYS[DAY + p]
      local new_day = redis.call('INCRBY', dk, #list) == #list
      if new_day then redis.call('PEXPIRE', dk, math.max(next_mid - now, 1) + 60000) end
      local before = counts[p] - #list
      local refresh = new_day or before == 0 or exps[p] <= now + KEEP
      window_add(rq, tk, now, ids, toks, before, sum0[p], firsts[p],
                 refresh and str(now + 2 * KEEP) or nil)
      if refresh then
        redis.call('PEXPIRE', rq, 2 * KEEP)
        redis.call('PEXPIRE', tk, 2 * KEEP)
        -- The status page and admin resets find pairs in this set: keep this one in it (the
        -- set may have expired or been evicted since the pair's day began, or the usage scan
        -- removed the pair while it was idle), while the set has room; a member already in it
        -- stays.
        if redis.call('SCARD', pairs_key) < PAIRS_CAP then
          redis.call('SADD', pairs_key, ARGV[PJ + (p - 1) * 4 + 4])
        end
        redis.call('PEXPIRE', pairs_key, 172800000)
      end
    end
  end
end
return answers
