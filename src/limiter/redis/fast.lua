-- usagewarden: the exact Redis limiter, part 3 of 4 (after limiter.lua and queue.lua):
-- the common admission, straight from the arguments and the fields read. An acquire or a
-- check whose keys have no queue, no observed ceiling and no pause, where nothing leaves
-- a window, the request fits every limit and time runs forward is decided here with no
-- state tables: the same decision, reply and writes as the general path (ops.lua), which
-- takes every other call. The field layout is at the top of limiter.lua.
--
-- Every table here is allocated once and reused, numbers stay in locals, and the reply of
-- one key is packed without a list: the server's time per call is mostly this code's.

-- What is left of a dimension, as replied (-1: no limit).
local function shown(r)
  if r == HUGE then return -1 end
  return max(0, floor(r))
end

-- The reply of one key, and the head of the arguments.
local RFMT1 = '<dddddddddddddd'
local AFMT = '<ddddddd'
-- Per window of the call, across its keys: its state (false: empty) and now's slot; the
-- tables the states are unpacked into.
local FT, FS, FP = {}, {}, {}
-- Each key's parsed limits (the cache may be renewed while a call reads them), its fields
-- read, its generation and expiry (from m); the arguments of its HSET.
local FL, FV, FG, FX, ARGS = {}, {}, {}, {}, {}

-- The packed reply, or nil for the general path; then also now.
local function admit_fast(KEYS, ARGV, check)
  if not pack then bind() end
  local now, u1, u2, u3, u4, u5, u6 = unpack_s(AFMT, ARGV[2])
  local server = now < 0
  if server then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local nk = #KEYS
  for k = 1, nk do
    local l = LIMITS[ARGV[3 + k]] or limits_of(ARGV[3 + k])
    FL[k] = l
    FV[k] = redis.call('HMGET', KEYS[k], unpack(l.hot))
  end
  local r1, r2, r3, r6 = HUGE, HUGE, HUGE, HUGE
  local share, bk, bi, j = HUGE, 0, 0, 0
  for k = 1, nk do
    local vals, l = FV[k], FL[k]
    local g, x = 0, -1
    if vals[1] then
      local p, flags
      g, p, flags, x = unpack_s(MFMT, vals[1])
      -- A ceiling, a queue or a pause (even one that ended: the general path clears it).
      if flags ~= 0 or p ~= 0 then return nil, now end
      if x >= 0 and not server then return nil, now end
    end
    FG[k], FX[k] = g, x
    local first, wins, wq = j, l.wins, l.wq
    for i = 1, l.nw do
      local v, t, W = vals[1 + i], false, wins[i]
      local s = floor(now / wq[i])
      if v then
        t = FP[j + 1]
        if not t then
          t = {}
          FP[j + 1] = t
        end
        t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13], t[14],
          t[15], t[16] = unpack_s(WFMT, v)
        -- Something leaves the window, or time ran back: the general path.
        if t[1] < 0 or t[2] + W <= now or s < t[3] then return nil, now end
      end
      j = j + 1
      FT[j], FS[j] = t, s
    end
    local sd, sw, sa = l.sd, l.sw, l.sa
    for i = 1, l.ns do
      local d, amount, t = sd[i], sa[i], FT[first + sw[i]]
      local left
      if d == 1 then
        left = amount - (t and t[11] or 0) - u1
        if left < 0 then return nil, now end
        if left < r1 then r1 = left end
      elseif d == 2 then
        left = amount - (t and t[12] or 0) - u2
        if left < 0 then return nil, now end
        if left < r2 then r2 = left end
      elseif d == 3 then
        left = amount - (t and t[13] or 0) - u3
        if left < 0 then return nil, now end
        if left < r3 then r3 = left end
      elseif d == 4 then
        left = amount - (t and t[12] + t[13] or 0) - (u2 + u3)
        if left < 0 then return nil, now end
        if left < r2 then r2 = left end
        if left < r3 then r3 = left end
      else
        left = amount - (t and t[16] or 0) - u6
        if left < 0 then return nil, now end
        if left < r6 then r6 = left end
      end
      local sh = left / amount
      if sh < share then share, bk, bi = sh, k, i end
    end
  end
  local reply
  local found = bk > 0 and 1 or 0
  if nk == 1 then
    reply = pack(RFMT1, 1, 0, found, bk, bi, 0, shown(r1), shown(r2), shown(r3), -1, -1,
                 shown(r6), now, FG[1])
  else
    local list = {1, 0, found, bk, bi, 0, shown(r1), shown(r2), shown(r3), -1, -1, shown(r6),
                  now}
    for k = 1, nk do list[13 + k] = FG[k] end
    reply = packed(list)
  end
  if check then return reply end
  j = 0
  for k = 1, nk do
    local l, longest = FL[k], 0
    local wins, wq, wn, bn = l.wins, l.wq, l.wn, l.bn
    local args, a = ARGS, 0
    for i = 1, l.nw do
      j = j + 1
      local t, s, W = FT[j], FS[j], wins[i]
      local prefix = bn[i]
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
          -- A new newest bucket: the one before is stored as a bucket, linked to it.
          nlast = now
          args[a + 1] = prefix .. fmt(t[3])
          args[a + 2] = pack(BFMT, t[4], s, t[5], t[6], t[7], t[8], t[9], t[10])
          a = a + 2
        end
      end
      args[a + 1] = wn[i]
      args[a + 2] = pack(WFMT, head, headlast, s, nlast, n1, n2, n3, n4, n5, n6,
                         s1, s2, s3, s4, s5, s6)
      a = a + 2
      longest = max(longest, W, nlast + W - now)
    end
    -- As save: the key lives while its newest usage counts.
    local ttl = floor(longest / 1000) + 1000
    local expire = not server or FX[k] < now + ttl * 1000
    if expire and server then
      ttl = ttl + floor(ttl / 8)
      args[a + 1] = 'm'
      args[a + 2] = pack(MFMT, FG[k], 0, 0, now + ttl * 1000)
      a = a + 2
    end
    redis.call('HSET', KEYS[k], unpack(args, 1, a))
    if expire then redis.call('PEXPIRE', KEYS[k], ttl) end
  end
  return reply
end
