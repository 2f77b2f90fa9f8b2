-- Writes the record if the stored version is the expected one (0: none, or
-- something a store did not write, which the write replaces), and tells the
-- waiters.
--
-- KEYS[1] the record hash; ARGV: expected version, new version, envelope,
-- channel. Returns {1, new, ""} or {0, stored version or "", envelope or ""}.
local kind = redis.call('TYPE', KEYS[1]).ok
local current = nil
if kind == 'hash' then
  current = redis.call('HGET', KEYS[1], 'version')
  if not is_version(current) then current = nil end
end
if (current or '0') ~= ARGV[1] then
  local envelope = ''
  if current then envelope = redis.call('HGET', KEYS[1], 'envelope') or '' end
  return {0, current or '', envelope}
end
if kind ~= 'none' and not current then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'envelope', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1, ARGV[2], ''}
