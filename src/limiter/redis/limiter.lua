-- usagewarden: the exact Redis limiter, one atomic call per operation. One library in
-- four files, concatenated in this order: limiter.lua (arguments, windows), queue.lua
-- (the queue of waiters), fast.lua (the common admission), ops.lua (the operations).
--
-- KEYS: one hash per limiter key (named by the client with the layout's version, so that
-- versions with another layout never read these fields). Its fields:
--   m          the key's state apart from its windows, packed doubles: generation (a
--              reset bumps it; older reservations settle into nothing), paused until (us;
--              0 = not paused), flags (1: a provider's ceiling is stored, 2: waiters
--              queued), until when the last PEXPIRE keeps the key (us; -1 = not known).
--              Absent: 0 0 0 -1.
--   c1..c4     a provider's ceiling on requests / input / output / total tokens:
--              "left observed until"
--   w<W>       window W (us), packed doubles: head slot, head's last use, newest slot,
--              newest's last use, newest's usage (6), the running sum of the window (6)
--   b<W>:<slot> a bucket (slot = floor(t / quantum)), packed doubles: last use, next slot
--              (-1 ends; the buckets are linked oldest first), usage (6). The newest
--              bucket lives only in its window's state: it is stored as a field once a
--              newer bucket follows it.
--   q          the queue of waiters (FIFO across processes), packed doubles: head ticket,
--              next ticket, tickets queued, their usage together (6)
--   q<seq>     a ticket, packed doubles: lease deadline (us, the server's TIME), owner's
--              token, usage (6)
-- Usage is "requests input output cache_read cache_write cost". Usage recorded at t counts
-- while now < last + W of its bucket: never released early, at most one quantum (W / 1000)
-- late. Memory per key is bounded by 1000 buckets per window.
--
-- The common call reads m and the window states (one HMGET of 1 + windows fields), and
-- writes the window states (one HSET; m too when the expiry is renewed): the newest
-- bucket is in its window's state, so admitting reads no bucket and writes one only when
-- a new one begins. The flags in m tell it that there is no ceiling and no queue to read.
-- Buckets are read only when they leave the window (each once),
-- when a refusal computes its exact wait, and for a usage span or a late settle.
--
-- The script is a library of functions: loaded once as a Redis Function (FUNCTION LOAD;
-- the top level runs once, each call runs only `main`), or, where Functions are not
-- available, sent as a script whose last line calls `main` (EVALSHA). The module-level
-- locals below are the state of one call, set by `begin`; the parsed limits are cached
-- across calls (a pure function of their encoding).
--
-- Every reply is a list of numbers, sent as one string of packed little-endian doubles.
--
-- ARGV: op, the numbers (packed little-endian doubles): now (us; -1 = the server's
-- TIME), usage (6), second usage (6), extra, the waiter's token, the ticket lease (us),
-- for lease the fraction of each limit a slice takes (in millionths), then per key:
-- generation, ticket (0 = none); for observe, then: count, (dimension, remaining, reset
-- us or -1)...; then the channel told of refunds, resets and departures from a queue
-- (its waiters wake); then per key its limits (packed doubles): window count,
-- windows..., limit count, (dimension, window, amount)...
-- Dimensions: 1 requests, 2 input tokens, 3 output tokens, 4 total tokens, 5 cost.
--
-- The key's expiry: with the server's clock, m holds until when (us) the last PEXPIRE
-- keeps the key, set a slack beyond what its usage needs, so that most calls need no
-- PEXPIRE; with an injected clock every write sets the expiry (and m holds -1).
--
-- lease: like acquire of the usage (all keys or none, the same refusal), but each key is
-- granted a slice (6 values appended to the reply per key): the fraction of its smallest
-- limit on each dimension, at least the usage, at most what is left, then a bit mask of the
-- dimensions it bounds (limits and observed ceilings). The slice is recorded at now + extra
-- (the slice's end), so it counts from now until one window after its end.
-- return: an adjust that also gives back to observed ceilings what it takes away (the
-- unused part of a slice never reached the provider).
--
-- The queue: acquire, check and lease refuse while live tickets are queued on any key
-- (retry_after: when the request fits once the queued usage has gone first). wait is the
-- acquire of a waiter: it refreshes the caller's tickets, admits only the head of every
-- queue it is in (and drops its tickets then), and otherwise takes a ticket at the tail
-- of every queue (all at once, so the order is the same on every key). Its reply appends
-- the ticket on each key and 1 if the caller heads every queue (its retry_after is then
-- exact; else it is when the blocking head's lease ends). A ticket whose lease ran out
-- (its holder died) is dropped when it reaches the head. leave drops the caller's
-- tickets. Departures wake the next head (a publish on the channel).

-- Libraries, bound at the first call (a library's load sees no globals but redis).
local HUGE, floor, max, min, pack, unpack_s
local function bind()
  HUGE, floor, max, min = math.huge, math.floor, math.max, math.min
  pack, unpack_s = struct.pack, struct.unpack
end
local WFMT = 'dddddddddddddddd'
local BFMT = 'dddddddd'
local QFMT = 'ddddddddd'
local MFMT = '<dddd'
-- The flags of m.
local CEILING, QUEUED = 1, 2

-- The call: its operation, time, usages and keys (set by `begin`).
local op, now, server_clock, U, V, extra, channel, token, LEASE, FRACTION
local A, pos, keys, states, lease_clock

local function num()
  local v = A[pos]
  pos = pos + 1
  return v
end

local function fmt(n) return string.format('%.0f', n) end
local function nums(s)
  local t, i = {}, 1
  for x in string.gmatch(s, '%S+') do
    t[i] = tonumber(x)
    i = i + 1
  end
  return t
end
local function zeros() return {0, 0, 0, 0, 0, 0} end
-- How much of dimension d a usage vector holds (the vector starting at offset o).
local function dimval(v, o, d)
  if d == 4 then return v[o + 2] + v[o + 3] end
  if d == 5 then return v[o + 6] end
  return v[o + d]
end
-- Does a limit on dimension a bound usage of dimension d?
local function bounds(a, d) return a == d or (a == 4 and (d == 2 or d == 3)) end
local function cap(rem, d, left)
  if left < 0 then left = 0 end
  if d == 1 then rem[1] = min(rem[1], left)
  elseif d == 2 then rem[2] = min(rem[2], left)
  elseif d == 3 then rem[3] = min(rem[3], left)
  elseif d == 4 then
    rem[2] = min(rem[2], left)
    rem[3] = min(rem[3], left)
  else rem[6] = min(rem[6], left) end
end

-- Packed doubles as a table (the unpack format of each length made once).
local DFMT = {}
local function doubles(s)
  local n = #s / 8
  local f = DFMT[n]
  if not f then
    f = '<' .. string.rep('d', n)
    DFMT[n] = f
  end
  return {unpack_s(f, s)}
end

-- A reply of numbers as one string of packed little-endian doubles: one bulk reply
-- instead of one per number (each costs the server as much as a line of Lua).
local PFMT = {}
local function packed(reply)
  local n = #reply
  local f = PFMT[n]
  if not f then
    f = '<' .. string.rep('d', n)
    PFMT[n] = f
  end
  return pack(f, unpack(reply))
end

-- A key's limits, parsed once per encoding: windows, specs and the fields a call reads.
local LIMITS, cached = {}, 0
local function limits_of(blob)
  local l = LIMITS[blob]
  if l then return l end
  local t, i = doubles(blob), 1
  local function n()
    i = i + 1
    return t[i - 1]
  end
  -- By window index (fast.lua): W, quantum, field names; by limit: dimension, window
  -- index, amount. `fields`: what the general path reads; `hot`: what the common
  -- admission reads (m, then the windows).
  l = {wins = {}, specs = {}, wname = {}, bname = {}, wat = {},
       fields = {'m', 'c1', 'c2', 'c3', 'c4'}, hot = {'m'},
       wq = {}, wn = {}, bn = {}, sd = {}, sw = {}, sa = {}}
  for w = 1, n() do
    local W = n()
    l.wins[w] = W
    l.wat[W] = w
    l.wname[W] = 'w' .. fmt(W)
    l.bname[W] = 'b' .. fmt(W) .. ':'
    l.fields[5 + w] = l.wname[W]
    l.hot[1 + w] = l.wname[W]
    l.wq[w], l.wn[w], l.bn[w] = max(1, floor(W / 1000)), l.wname[W], l.bname[W]
  end
  l.fields[#l.fields + 1] = 'q'
  for s = 1, n() do
    local spec = {d = n(), W = n(), amount = n()}
    l.specs[s] = spec
    l.sd[s], l.sw[s], l.sa[s] = spec.d, l.wat[spec.W], spec.amount
  end
  l.nw, l.ns, l.nf = #l.wins, #l.specs, #l.fields
  if cached >= 256 then
    LIMITS, cached = {}, 0
  end
  LIMITS[blob], cached = l, cached + 1
  return l
end

-- Reads the call's arguments into the module-level state (`at`: now, when already read).
local function begin(KEYS, ARGV, at)
  if not pack then bind() end
  op = ARGV[1]
  A, pos = doubles(ARGV[2]), 1
  now = num()
  server_clock = now < 0
  if at then
    now = at
  elseif server_clock then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  U = {A[2], A[3], A[4], A[5], A[6], A[7]}
  if op == 'adjust' or op == 'return' then V = {A[8], A[9], A[10], A[11], A[12], A[13]} end
  extra, token, LEASE, FRACTION = A[14], A[15], A[16], A[17]
  pos = 18
  channel = ARGV[3]
  lease_clock = nil
  keys = {}
  for k = 1, #KEYS do
    local l = limits_of(ARGV[3 + k])
    keys[k] = {name = KEYS[k], gen = num(), ticket = num(), wins = l.wins, specs = l.specs,
               limits = l}
  end
end

local function bfield(w, s) return w.bname .. fmt(s) end
-- Bucket s of window w: {last, next, usage (6)}, or nil.
local function bget(st, w, s)
  if s == w.newest then
    local n = w.n
    return {w.nlast, -1, n[1], n[2], n[3], n[4], n[5], n[6]}
  end
  local f = bfield(w, s)
  local v = st.out[f] or redis.call('HGET', st.name, f)
  if not v then return nil end
  return {unpack_s(BFMT, v)}
end
-- Writes bucket s (at save): the newest one into its window's state only.
local function bput(st, w, s, t)
  if s == w.newest then
    w.nlast = t[1]
    w.n = {t[3], t[4], t[5], t[6], t[7], t[8]}
  else
    st.out[bfield(w, s)] = pack(BFMT, t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8])
  end
  w.dirty = true
  st.changed = true
end
local function bdel(st, w, s)
  local f = bfield(w, s)
  st.out[f] = nil
  st.gone[#st.gone + 1] = f
end

-- A key's state from its fields (`vals`: the HMGET of its limits' fields).
local function load(key, vals)
  local l = key.limits
  local g, p, _, x = 0, 0, 0, -1
  if vals[1] then g, p, _, x = unpack_s(MFMT, vals[1]) end
  local st = {name = key.name, key = key, g = g, p = p, m = vals[1] or false,
              c = {}, w = {}, exists = false, out = {}, gone = {}, changed = false,
              x = x >= 0 and x or nil}
  for i = 1, 5 do if vals[i] then st.exists = true end end
  for d = 1, 4 do
    if vals[1 + d] then
      st.ceilings = true
      local t = nums(vals[1 + d])
      if t[3] > now then st.c[d] = {left = t[1], observed = t[2], untl = t[3]} end
    end
  end
  local qi = #l.fields
  for i, W in ipairs(key.wins) do
    local w = {W = W, q = max(1, floor(W / 1000)), dirty = false, bname = l.bname[W],
               wname = l.wname[W], head = -1, headlast = 0, newest = -1, nlast = 0}
    local v = vals[5 + i]
    if v then
      st.exists = true
      local t1, t2, t3, t4, n1, n2, n3, n4, n5, n6, s1, s2, s3, s4, s5, s6 = unpack_s(WFMT, v)
      w.head, w.headlast, w.newest, w.nlast = t1, t2, t3, t4
      w.n = {n1, n2, n3, n4, n5, n6}
      w.sum = {s1, s2, s3, s4, s5, s6}
    else
      w.n, w.sum = zeros(), zeros()
    end
    st.w[W] = w
  end
  if vals[qi] then
    local t = {unpack_s(QFMT, vals[qi])}
    st.q = {head = t[1], nxt = t[2], count = t[3], sum = {t[4], t[5], t[6], t[7], t[8], t[9]}}
  end
  if st.p <= now then st.p = 0 end
  return st
end

-- Drops the buckets that have left the window since the last call (each read once).
local function evict(st, w)
  while w.head >= 0 and w.headlast + w.W <= now do
    local t = bget(st, w, w.head)
    for i = 1, 6 do w.sum[i] = w.sum[i] - t[2 + i] end
    bdel(st, w, w.head)
    if t[2] < 0 then
      w.head, w.headlast, w.newest, w.nlast, w.n, w.sum = -1, 0, -1, 0, zeros(), zeros()
    else
      w.head = t[2]
      w.headlast = bget(st, w, w.head)[1]
    end
    w.dirty = true
    st.changed = true
  end
end

local function evict_all(st)
  for _, w in pairs(st.w) do evict(st, w) end
end

-- Records usage u (6 values) at time at in window w.
local function record(st, w, at, u)
  local s = math.floor(at / w.q)
  local entry = {at, -1, u[1], u[2], u[3], u[4], u[5], u[6]}
  if w.head < 0 then
    w.head, w.headlast, w.newest = s, at, s
    bput(st, w, s, entry)
  elseif s == w.newest then
    local t = bget(st, w, s)
    t[1] = math.max(t[1], at)
    for i = 1, 6 do t[2 + i] = t[2 + i] + u[i] end
    bput(st, w, s, t)
    if s == w.head then w.headlast = t[1] end
  elseif s > w.newest then
    -- The newest bucket is followed: it leaves the window's state for its own field.
    local old = w.newest
    local p = bget(st, w, old)
    p[2] = s
    w.newest = s
    bput(st, w, old, p)
    bput(st, w, s, entry)
  elseif s < w.head then
    entry[2] = w.head
    bput(st, w, s, entry)
    w.head, w.headlast = s, at
  else
    local prev = w.head
    while true do
      local t = bget(st, w, prev)
      if prev == s then
        t[1] = math.max(t[1], at)
        for i = 1, 6 do t[2 + i] = t[2 + i] + u[i] end
        bput(st, w, s, t)
        if s == w.head then w.headlast = t[1] end
        break
      end
      if t[2] < 0 or t[2] > s then
        entry[2] = t[2]
        bput(st, w, s, entry)
        t[2] = s
        bput(st, w, prev, t)
        break
      end
      prev = t[2]
    end
  end
  for i = 1, 6 do w.sum[i] = w.sum[i] + u[i] end
end

-- Microseconds until `need` of dimension d has left window w.
local function until_released(st, w, d, need)
  local released, s = 0, w.head
  while s >= 0 do
    local t = bget(st, w, s)
    released = released + dimval(t, 2, d)
    if released >= need then return math.max(0, t[1] + w.W - now) end
    s = t[2]
  end
  return w.W
end

local function remaining_of(st)
  local rem = {HUGE, HUGE, HUGE, HUGE, HUGE, HUGE}
  if st.p > now then return zeros() end
  for _, spec in ipairs(st.key.specs) do
    cap(rem, spec.d, spec.amount - dimval(st.w[spec.W].sum, 0, spec.d))
  end
  for d, c in pairs(st.c) do cap(rem, d, c.left) end
  return rem
end

-- The verdict on one key: {status = 'fits'|'waits'|'never', ...}.
local function evaluate(st, k, u)
  local rem = {HUGE, HUGE, HUGE, HUGE, HUGE, HUGE}
  local binding, share = nil, HUGE
  local wait, wlimit = nil, nil
  for i, spec in ipairs(st.key.specs) do
    local wanted = dimval(u, 0, spec.d)
    if wanted > spec.amount then
      return {status = 'never', limit = {1, k, i, 0}}
    end
    local w = st.w[spec.W]
    local used = dimval(w.sum, 0, spec.d)
    local after = used + wanted
    if after > spec.amount then
      local t = until_released(st, w, spec.d, after - spec.amount)
      if not wait or t > wait then wait, wlimit = t, {1, k, i, 0} end
      cap(rem, spec.d, spec.amount - used)
    else
      local left = spec.amount - after
      cap(rem, spec.d, left)
      local sh = left / spec.amount
      if sh < share then share, binding = sh, {1, k, i, 0} end
    end
  end
  if st.p > now then
    local t = st.p - now
    if not wait or t > wait then wait, wlimit = t, {2, k, 0, 0} end
  end
  for d, c in pairs(st.c) do
    local wanted = dimval(u, 0, d)
    if wanted > c.left then
      local t = c.untl - now
      if not wait or t > wait then wait, wlimit = t, {3, k, d, c.observed} end
      cap(rem, d, c.left)
    else
      local left = c.left - wanted
      cap(rem, d, left)
      local sh = left / math.max(1, c.observed)
      if sh < share then share, binding = sh, {3, k, d, c.observed} end
    end
  end
  if wait then return {status = 'waits', wait = wait, limit = wlimit} end
  return {status = 'fits', rem = rem, binding = binding, share = share}
end

local function ttl_ms(st)
  local longest = 0
  for _, W in ipairs(st.key.wins) do longest = math.max(longest, W) end
  -- A slice is recorded ahead of now: it counts until its end plus the window.
  for _, w in pairs(st.w) do
    if w.head >= 0 then longest = math.max(longest, w.nlast + w.W - now) end
  end
  if st.p > now then longest = math.max(longest, st.p - now) end
  for _, c in pairs(st.c) do longest = math.max(longest, c.untl - now) end
  if st.q then longest = math.max(longest, LEASE) end
  return math.floor(longest / 1000) + 1000
end

-- Writes what the call changed in one HSET (and HDEL), and keeps the key alive while
-- its newest usage counts.
local function save(st)
  if not st.changed then return end
  local args = {}
  local empty = st.p == 0
  for _, c in pairs(st.c) do empty = false end
  for _, w in pairs(st.w) do
    if w.head >= 0 then empty = false end
  end
  if st.qdirty then
    local q = st.q
    if q.count > 0 then
      local u = q.sum
      st.out['q'] = pack(QFMT, q.head, q.nxt, q.count, u[1], u[2], u[3], u[4], u[5], u[6])
    else
      st.q = nil
      st.out['q'] = nil
      st.gone[#st.gone + 1] = 'q'
    end
  end
  if st.q then empty = false end
  if empty then
    redis.call('DEL', st.name)
    if st.g > 0 then
      redis.call('HSET', st.name, 'm', pack(MFMT, st.g, 0, 0, -1))
      redis.call('PEXPIRE', st.name, ttl_ms(st))
    end
    return
  end
  -- The expiry: set again only when the last one falls short (server's clock).
  local ttl = ttl_ms(st)
  local expire, x = true, -1
  if server_clock and st.x and st.x >= now + ttl * 1000 then
    expire, x = false, st.x
  elseif server_clock then
    ttl = ttl + floor(ttl / 8)
    x = now + ttl * 1000
  end
  local flags = 0
  if st.ceilings or next(st.c) then flags = CEILING end
  if st.q then flags = flags + QUEUED end
  local m = pack(MFMT, st.g, st.p, flags, x)
  if m ~= (st.m or pack(MFMT, 0, 0, 0, -1)) then st.out['m'] = m end
  for _, w in pairs(st.w) do
    if w.dirty then
      if w.head >= 0 then
        local n, s = w.n, w.sum
        args[#args + 1] = w.wname
        args[#args + 1] = pack(WFMT, w.head, w.headlast, w.newest, w.nlast, n[1], n[2], n[3],
                               n[4], n[5], n[6], s[1], s[2], s[3], s[4], s[5], s[6])
      else
        st.gone[#st.gone + 1] = w.wname
      end
    end
  end
  for f, v in pairs(st.out) do
    args[#args + 1] = f
    args[#args + 1] = v
  end
  if #st.gone > 0 then redis.call('HDEL', st.name, unpack(st.gone)) end
  if #args > 0 then redis.call('HSET', st.name, unpack(args)) end
  if expire then redis.call('PEXPIRE', st.name, ttl) end
end

local function out(rem)
  local r = {}
  for i = 1, 6 do
    if rem[i] == HUGE then r[i] = -1 else r[i] = math.max(0, math.floor(rem[i])) end
  end
  return r
end

-- The fields of usage a limit on dimension d counts.
local FIELDS = {{1}, {2}, {3}, {2, 3}, {6}}

-- The slice granted on one key for usage `need` (which fits): `f` millionths of the
-- smallest limit on each dimension, at least `need`, within what is left on every limit.
local function slice_of(st, need, f)
  local want = {}
  for _, spec in ipairs(st.key.specs) do
    local a = math.max(1, math.floor(spec.amount * f / 1000000))
    if not want[spec.d] or a < want[spec.d] then want[spec.d] = a end
  end
  local g = zeros()
  g[1] = want[1] or 0
  g[2] = want[2] or 0
  g[3] = want[3] or 0
  g[6] = want[5] or 0
  if want[4] then
    -- A total-token limit alone: the slice's tokens are pooled in the input field
    -- (the process admits any mix of input and output within their sum).
    if not want[2] and not want[3] then g[2] = want[4]
    elseif not want[3] then g[3] = math.max(0, want[4] - g[2])
    elseif not want[2] then g[2] = math.max(0, want[4] - g[3]) end
  end
  for _, i in ipairs({1, 2, 3, 6}) do g[i] = math.max(g[i], need[i]) end
  local function shrink(d, avail)
    local excess = dimval(g, 0, d) - avail
    for _, i in ipairs(FIELDS[d]) do
      if excess <= 0 then return end
      local cut = math.min(excess, g[i] - need[i])
      if cut > 0 then
        g[i] = g[i] - cut
        excess = excess - cut
      end
    end
  end
  for _, spec in ipairs(st.key.specs) do
    shrink(spec.d, spec.amount - dimval(st.w[spec.W].sum, 0, spec.d))
  end
  for d, c in pairs(st.c) do shrink(d, c.left) end
  return g
end

