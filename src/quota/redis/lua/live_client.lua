-- Take one of a client's concurrent slots for a Live session (client.lua's check: its
-- max_concurrent, RPM, RPD, and what it has left in its budgets), counted as one request in its
-- minute and day; its member in the in-flight set is `live:SESSION`, scored by lease end and
-- renewed by live_renew.lua while the session lives.
-- KEYS: the client's six keys (client.lua). ARGV 1-11: the client part as admit.lua passes it
--   (its cost: what the client must have left; nothing is reserved), 12 the session's member,
--   13 now override ('' = Redis TIME).
-- Returns {0}: taken; or {client limit code, limit value, retry after ms}: nothing written.
local now = now_ms(ARGV[13])
local why = client_check(0, 0, 0, now, tostring(now - W))
if why then return why end
ARGV[8] = '0'
client_reserve(0, 0, ARGV[12], '0', now)
return {0}
