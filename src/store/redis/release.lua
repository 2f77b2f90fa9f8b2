-- Deletes the lease if the owner still holds it.
--
-- KEYS[1] the lease key; ARGV[1] the owner. Returns the number of keys
-- deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
