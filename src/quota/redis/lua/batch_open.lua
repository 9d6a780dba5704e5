-- A creation's hold became a batch job: the job's entry replaces the hold (written even when
-- the hold's lease has lapsed: the job exists at Google and holds its quota).
-- KEYS: the batch hash. ARGV: the hold's field, the job's name, the job's JSON.
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
