-- usagewarden: the exact Redis limiter, part 3 of 4 (after limiter.lua and queue.lua):
-- the common admission, straight from the fields read. An acquire or a check whose keys
-- have no queue, no observed ceiling and no pause, where nothing leaves a window, the
-- request fits every limit and time runs forward is decided here with no state tables:
-- the same decision, reply and writes as the general path (ops.lua), which takes every
-- other call. The field layout is at the top of limiter.lua.

-- The newest bucket's field name, kept from the last call (a pure function of its parts).
local named_prefix, named_slot, named_field
local function bucket_field(prefix, s)
  if s ~= named_slot or prefix ~= named_prefix then
    named_prefix, named_slot, named_field = prefix, s, prefix .. fmt(s)
  end
  return named_field
end

-- What is left of a dimension, as replied (-1: no limit).
local function shown(r)
  if r == HUGE then return -1 end
  return max(0, floor(r))
end

-- The reply, or nil for the general path. `fetched`: each key's HMGET of its fields.
local function admit_fast(fetched)
  local rem = {HUGE, HUGE, HUGE, HUGE, HUGE, HUGE}
  local share, bk, bi = HUGE, 0, 0
  -- Each window of each key in turn: its state (nil: empty) and now's slot in it.
  local T, S, j = {}, {}, 0
  for k, key in ipairs(keys) do
    local vals, l = fetched[k], key.limits
    if vals[3] or vals[4] or vals[5] or vals[6] or vals[#l.fields] then return nil end
    if vals[2] and tonumber(vals[2]) > now then return nil end
    if vals[7] and not server_clock then return nil end
    local first = j
    for i, W in ipairs(key.wins) do
      local v, t = vals[7 + i], false
      local s = floor(now / max(1, floor(W / 1000)))
      if v then
        t = {unpack_s(WFMT, v)}
        -- Something leaves the window, or time ran back: the general path.
        if t[1] < 0 or t[2] + W <= now or s < t[3] then return nil end
      end
      j = j + 1
      T[j], S[j] = t, s
    end
    for i, spec in ipairs(key.specs) do
      local d = spec.d
      local wanted = dimval(U, 0, d)
      local t = T[first + l.wat[spec.W]]
      local used = t and dimval(t, 10, d) or 0
      local left = spec.amount - used - wanted
      if left < 0 then return nil end
      cap(rem, d, left)
      local sh = left / spec.amount
      if sh < share then share, bk, bi = sh, k, i end
    end
  end
  local r1, r2, r3, r4, r5, r6 = rem[1], rem[2], rem[3], rem[4], rem[5], rem[6]
  local reply = {1, 0, bk > 0 and 1 or 0, bk, bi, 0, shown(r1), shown(r2), shown(r3), shown(r4),
                 shown(r5), shown(r6), now}
  for k, _ in ipairs(keys) do reply[13 + k] = tonumber(fetched[k][1]) or 0 end
  if op == 'check' then return reply end
  local u1, u2, u3, u4, u5, u6 = U[1], U[2], U[3], U[4], U[5], U[6]
  j = 0
  for k, key in ipairs(keys) do
    local l, longest = key.limits, 0
    local args = {}
    for _, W in ipairs(key.wins) do
      j = j + 1
      local t, s = T[j], S[j]
      local prefix = l.bname[W]
      local head, headlast, nlast
      local n1, n2, n3, n4, n5, n6 = u1, u2, u3, u4, u5, u6
      local s1, s2, s3, s4, s5, s6 = u1, u2, u3, u4, u5, u6
      if not t then
        head, headlast, nlast = s, now, now
      else
        head, headlast = t[1], t[2]
        s1, s2, s3, s4, s5, s6 = t[11] + u1, t[12] + u2, t[13] + u3, t[14] + u4, t[15] + u5,
                                 t[16] + u6
        if s == t[3] then
          nlast = max(t[4], now)
          n1, n2, n3, n4, n5, n6 = t[5] + u1, t[6] + u2, t[7] + u3, t[8] + u4, t[9] + u5,
                                   t[10] + u6
          if s == head then headlast = nlast end
        else
          -- A new newest bucket: the one before links to it.
          nlast = now
          args[#args + 1] = prefix .. fmt(t[3])
          args[#args + 1] = pack(BFMT, t[4], s, t[5], t[6], t[7], t[8], t[9], t[10])
        end
      end
      args[#args + 1] = bucket_field(prefix, s)
      args[#args + 1] = pack(BFMT, nlast, -1, n1, n2, n3, n4, n5, n6)
      args[#args + 1] = l.wname[W]
      args[#args + 1] = pack(WFMT, head, headlast, s, nlast, n1, n2, n3, n4, n5, n6,
                             s1, s2, s3, s4, s5, s6)
      longest = max(longest, W, nlast + W - now)
    end
    -- As save: the key lives while its newest usage counts.
    local ttl = floor(longest / 1000) + 1000
    local x = fetched[k][7]
    local expire = not server_clock or not x or unpack_s('<d', x) < now + ttl * 1000
    if expire and server_clock then
      ttl = ttl + floor(ttl / 8)
      args[#args + 1] = 'x'
      args[#args + 1] = pack('<d', now + ttl * 1000)
    end
    redis.call('HSET', key.name, unpack(args))
    if expire then redis.call('PEXPIRE', key.name, ttl) end
  end
  return reply
end
