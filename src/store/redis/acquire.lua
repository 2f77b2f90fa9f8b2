-- Takes the lease for an owner, or renews it for its holder.
--
-- KEYS[1] the lease key; ARGV: owner, time to live in ms. Returns {1, 0}, or
-- {0, PTTL of the holder's lease}. A lease without expiry was not taken by a
-- store (which always sets one): it gets the caller's time to live, so that
-- it lapses instead of holding every replica off for ever.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  pttl = tonumber(ARGV[2])
end
return {0, pttl}
