-- Room for a new batch job (src/quota/batch.rs; its `choose` makes the same choice in memory):
-- every entry of the namespace's batch hash is read (at most batch_concurrent x projects, twice
-- that with results files waiting), lapsed holds and results files are dropped, and the
-- candidate project with the most token room for the model under both quotas (ties: fewer
-- jobs, then the candidates' order) gets a hold, `hold:N`, with a lease.
-- KEYS: the batch hash, the hold counter.
-- ARGV: 1 now override ('' = Redis TIME), 2 jobs at once per project, 3 enqueued tokens per
--   project and model, 4 the model, 5 this job's tokens, 6 the hold's lease ms, 7 the job's
--   JSON without its opening brace (its project, key id and lease are written before it),
--   then per candidate: project, key id.
-- Returns {0}: no candidate has room (nothing written); {i, hold}: candidate i (from 1).
local now = now_ms(ARGV[1])
local concurrent, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local model, tokens = ARGV[4], tonumber(ARGV[5])
local jobs, enqueued = {}, {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field = all[i]
  local ok, j = pcall(cjson.decode, all[i + 1])
  local kind = string.sub(field, 1, 5)
  if not ok or type(j) ~= 'table' then
    redis.call('HDEL', KEYS[1], field)
  elseif (kind == 'hold:' or kind == 'file:') and j.u and tonumber(j.u) <= now then
    redis.call('HDEL', KEYS[1], field)
  elseif kind ~= 'file:' then
    jobs[j.p] = (jobs[j.p] or 0) + 1
    if j.m == model then enqueued[j.p] = (enqueued[j.p] or 0) + tonumber(j.t) end
  end
end
local best, best_room, best_jobs = nil, 0, 0
for i = 1, (#ARGV - 7) / 2 do
  local p = ARGV[6 + 2 * i]
  local n, e = jobs[p] or 0, enqueued[p] or 0
  if n < concurrent and e + tokens <= limit then
    local room = limit - e
    if best == nil or room > best_room or (room == best_room and n < best_jobs) then
      best, best_room, best_jobs = i, room, n
    end
  end
end
if best == nil then return {0} end
local hold = 'hold:' .. redis.call('INCR', KEYS[2])
local p, k = ARGV[6 + 2 * best], ARGV[7 + 2 * best]
local head = '{"p":' .. cjson.encode(p) .. ',"k":' .. cjson.encode(k) .. ',"u":'
  .. string.format('%d', now + tonumber(ARGV[6])) .. ','
redis.call('HSET', KEYS[1], hold, head .. ARGV[7])
return {best, hold}
