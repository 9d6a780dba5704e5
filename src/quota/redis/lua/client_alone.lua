-- A client's own step outside an admission: client.lua's check, then its reservation. Two
-- callers: a batch job's budget reservation at its creation (every limit but the budgets at 0;
-- no member in flight; the cost added to its day's and month's use) and a Live session's slot
-- (its max_concurrent, RPM, RPD and what it has left in its budgets; counted as one request in
-- its minute and day; its member in the in-flight set is `live:SESSION`, scored by lease end and
-- renewed by live_renew.lua while the session lives; the cost only checked, since the session's
-- usage is charged as it arrives).
-- KEYS: the client's six keys (client.lua). ARGV 1-11: the client part as admit.lua passes it,
--   12 the member in flight ('0': none), 13 '1' to add the cost to its budgets ('0': checked
--   only), 14 now override ('' = Redis TIME).
-- Returns {0}: done; or {client limit code, limit value, retry after ms}: nothing written.
local now = now_ms(ARGV[14])
local why = client_check(0, 0, 0, now)
if why then return why end
if ARGV[13] ~= '1' then ARGV[8] = '0' end
client_reserve(0, 0, ARGV[12], '0', now)
return {0}
