-- Shared by the admission scripts (admit.lua, admit_many.lua): which keys are enabled, whether a
-- project can take an admission, and which project and key it takes.

-- Where each part of an admission's KEYS and ARGV starts (its first element at base + 1), with n
-- keys and m projects: in KEYS the day counts (after the n disabled flags and the m x 2
-- cooldowns) and the windows; in ARGV the project numbers, the projects' limits and the client
-- part.
local function layout(n, m)
  local DAY = n + 2 * m
  local WIN = DAY + m
  local OF = 9
  local PJ = OF + n
  return DAY, WIN, OF, PJ, PJ + 4 * m
end

-- How long a hold (a cooldown key's value, `until_ms` first) still runs at `now` (0: none).
local function held_ms(v, now)
  if not v then return 0 end
  local until_ms = tonumber(string.match(v, '^(%d+)')) or 0
  return until_ms - now
end

-- How long project p's holds (this model's, the whole project's; in `flags` after the n disabled
-- flags) still run at `now` (0: none).
local function project_hold(flags, n, p, now)
  local cd, cd2 = held_ms(flags[n + 2 * p - 1], now), held_ms(flags[n + 2 * p], now)
  if cd2 > cd then return cd2 end
  return cd
end

-- Projects with an enabled key (no flag in `flags[1..n]`), in the order of their first enabled
-- key, with each one's count of enabled keys; and each enabled key's project (ARGV from OF + 1).
local function enabled_projects(flags, n, OF)
  local order, enabled, project = {}, {}, {}
  for i = 1, n do
    if not flags[i] then
      local p = ARGV[OF + i] + 0
      project[i] = p
      if not enabled[p] then order[#order + 1] = p; enabled[p] = 0 end
      enabled[p] = enabled[p] + 1
    end
  end
  return order, enabled, project
end

-- The project taken among `open` (with room, in order) and its key (0-based among the n):
-- most headroom first, ties in turn from `rotation`, its enabled keys in turn too; or
-- (strategy 'o') the first open project and its first enabled key.
local function choose(open, heads, rotation, strategy, enabled, project, n)
  local best
  if strategy == 'o' then
    best = open[1]
  else
    local start = rotation % #open
    for j = 0, #open - 1 do
      local p = open[(start + j) % #open + 1]
      if not best or heads[p] > heads[best] then best = p end
    end
  end
  local want = 1
  if strategy ~= 'o' then want = rotation % enabled[best] + 1 end
  local seen = 0
  for i = 1, n do
    if project[i] == best then
      seen = seen + 1
      if seen == want then return best, i - 1 end
    end
  end
  return best, 0
end

-- Why a project cannot take `tokens` at `now` (nil: it can): {limit code (1 rpm, 2 tpm, 3 rpd),
-- limit value, retry after ms}. Its window (rq, tk) holds `count` entries with `tsum` tokens, of
-- which the first `stored` are in the sorted set (the rest are the run's own, at `now`); `dcount`
-- requests today.
local function refusal(rq, tk, count, stored, tsum, dcount, tokens, rpm, tpm, rpd, now, next_mid)
  if dcount >= rpd then return {3, rpd, math.max(next_mid - now, 1)} end
  local why = nil
  if count >= rpm then
    -- Room comes when the entry rpm places from the newest leaves; one of the run's own, at
    -- `now`, leaves a whole window from now.
    local wait = W
    if count - rpm < stored then
      local r = redis.call('ZRANGE', rq, count - rpm, count - rpm, 'WITHSCORES')
      wait = math.max(r[2] + W - now, 1)
    end
    why = {1, rpm, wait}
  end
  if tsum + tokens > tpm then
    local wait = tpm_wait(rq, tk, tsum + tokens - tpm, now)
    if not why or wait > why[3] then why = {2, tpm, wait} end
  end
  return why
end

-- What a project has left after one more admission of `tokens`: the smallest share of its three
-- limits.
local function headroom(count, tsum, dcount, tokens, rpm, tpm, rpd)
  local head, h2, h3 = (rpm - count - 1) / rpm, (tpm - tsum - tokens) / tpm, (rpd - dcount - 1) / rpd
  if h2 < head then head = h2 end
  if h3 < head then head = h3 end
  return head
end

-- The answer when no project is open: the refusal that ends first (a hold ending sooner
-- shortens it), or, with none, the hold's end (-1: every key disabled).
local function closed(refused, hold)
  if refused then
    if hold and hold < refused[3] then refused[3] = hold end
    return {0, refused[1], refused[2], refused[3]}
  end
  return {2, hold or -1}
end
