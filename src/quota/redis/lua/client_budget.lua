-- A client's budget reservation alone (a batch job's, at its creation): client.lua's check with
-- every limit but the budgets at 0, and the cost added to its day's and month's use.
-- KEYS: the client's six keys (client.lua). ARGV 1-11: the client part as admit.lua passes it,
--   12 now override ('' = Redis TIME).
-- Returns {0}: reserved; or {client limit code, limit value, retry after ms}: nothing written.
local now = now_ms(ARGV[12])
local why = client_check(0, 0, 0, now, tostring(now - W))
if why then return why end
client_reserve(0, 0, '0', '0', now)
return {0}
