-- Helpers of the record scripts (read.lua, compare_and_set.lua), prepended
-- to each of them.

-- Whether a stored version is one a store writes: a decimal u64 from 1, in
-- canonical form (no sign, no leading zero), up to 20 digits.
local function is_version(v)
  if not v or not string.match(v, '^[1-9]%d*$') or #v > 20 then return false end
  return #v < 20 or v <= '18446744073709551615'
end

-- The replication id of the history this node serves. A promoted replica
-- and a restarted primary take a new one: every event that can lose an
-- acknowledged write changes it, so a record written under another one may
-- lack writes that were acknowledged after it (a refresh token's spend mark).
local function epoch()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
end

-- Whether the record hash KEYS[1] was written under another epoch than
-- `here`, this node's.
local function is_stale(here)
  return redis.call('HGET', KEYS[1], 'epoch') ~= here
end
