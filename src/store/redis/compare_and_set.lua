-- Writes the record if the stored version is the expected one (0: none, or
-- something a store did not write, which the write replaces), stamped with
-- this node's epoch, and tells the waiters.
--
-- A write that marks the refresh token spent (the step before the token is
-- sent) is refused over a record of another epoch as well: that record may be
-- older than the history its version had before a failover, and its refresh
-- token spent in a write that the failover lost.
--
-- KEYS[1] the record hash; ARGV: expected version, new version, envelope,
-- channel, 1 if the write marks the refresh token spent (else 0). Returns
-- {1, new, "", 0} or {0, stored version or "", envelope or "", stale}.
local kind = redis.call('TYPE', KEYS[1]).ok
local current = nil
if kind == 'hash' then
  current = redis.call('HGET', KEYS[1], 'version')
  if not is_version(current) then current = nil end
end
local here = epoch()
local stale = 0
if current and is_stale(here) then stale = 1 end
if (current or '0') ~= ARGV[1] or (ARGV[5] == '1' and stale == 1) then
  local envelope = ''
  if current then envelope = redis.call('HGET', KEYS[1], 'envelope') or '' end
  return {0, current or '', envelope, stale}
end
if kind ~= 'none' and not current then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'envelope', ARGV[3], 'epoch', here)
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1, ARGV[2], '', 0}
