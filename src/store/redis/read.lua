-- Reads the record hash. A key of another type, or a hash whose version is
-- not one a store writes, was not written by a store: it reads as none.
--
-- KEYS[1] the record hash. Returns {version or "", envelope or "", foreign,
-- stale}: foreign is 1 when something else was found at the key, stale 1 when
-- the record was written under another epoch (its refresh token may have
-- been spent in writes that a failover lost).
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {'', '', 0, 0} end
if kind ~= 'hash' then return {'', '', 1, 0} end
local version = redis.call('HGET', KEYS[1], 'version')
if not is_version(version) then return {'', '', 1, 0} end
local stale = 0
if is_stale(epoch()) then stale = 1 end
return {version, redis.call('HGET', KEYS[1], 'envelope') or '', 0, stale}
