-- Helpers of the record scripts (read.lua, compare_and_set.lua), prepended
-- to each of them.

-- Whether a stored version is one a store writes: a decimal u64 from 1, in
-- canonical form (no sign, no leading zero), up to 20 digits.
local function is_version(v)
  if not v or not string.match(v, '^[1-9]%d*$') or #v > 20 then return false end
  return #v < 20 or v <= '18446744073709551615'
end
