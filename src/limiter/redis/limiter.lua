-- usagewarden: the exact Redis limiter, one atomic call per operation.
--
-- KEYS: one hash per limiter key. Its fields:
--   g          generation (a reset bumps it; older reservations settle into nothing)
--   p          paused until (us)
--   c1..c4     a provider's ceiling on requests / input / output / total tokens:
--              "left observed until"
--   w<W>       window W (us), packed doubles: head slot, head's last use, newest slot,
--              newest's last use, newest's usage (6), the running sum of the window (6)
--   b<W>:<slot> a bucket (slot = floor(t / quantum)), packed doubles: last use, next slot
--              (-1 ends; the buckets are linked oldest first), usage (6)
--   q          the queue of waiters (FIFO across processes), packed doubles: head ticket,
--              next ticket, tickets queued, their usage together (6)
--   q<seq>     a ticket, packed doubles: lease deadline (us, the server's TIME), owner's
--              token, usage (6)
-- Usage is "requests input output cache_read cache_write cost". Usage recorded at t counts
-- while now < last + W of its bucket: never released early, at most one quantum (W / 1000)
-- late. Memory per key is bounded by 1000 buckets per window.
--
-- The common call reads the window states (one HMGET), and writes them with the newest
-- bucket (one HSET): the window state holds a copy of the newest bucket, so admitting
-- never reads a bucket. Buckets are read only when they leave the window (each once),
-- when a refusal computes its exact wait, and for a usage span or a late settle.
--
-- ARGV: op, now (us; '' = the server's TIME), usage (6), second usage (6), extra, the
-- channel told of refunds, resets and departures from a queue (its waiters wake), the
-- waiter's token, the ticket lease (us), then per key: generation, ticket (0 = none),
-- window count, windows..., limit count, (dimension, window, amount)...;
-- for observe, then: count, (dimension, remaining, reset us or -1)...;
-- for lease, then: the fraction of each limit a slice takes, in millionths.
-- Dimensions: 1 requests, 2 input tokens, 3 output tokens, 4 total tokens, 5 cost.
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

local op = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local HUGE = math.huge
local U, V = {}, {}
for i = 1, 6 do
  U[i] = tonumber(ARGV[2 + i])
  V[i] = tonumber(ARGV[8 + i])
end
local extra = tonumber(ARGV[15])
local channel = ARGV[16]
local token = tonumber(ARGV[17])
local LEASE = tonumber(ARGV[18])
local pos = 19
local function num()
  local v = tonumber(ARGV[pos])
  pos = pos + 1
  return v
end

local pack, unpack_s = struct.pack, struct.unpack
local WFMT = 'dddddddddddddddd'
local BFMT = 'dddddddd'
local QFMT = 'ddddddddd'

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
  if d == 1 then rem[1] = math.min(rem[1], left)
  elseif d == 2 then rem[2] = math.min(rem[2], left)
  elseif d == 3 then rem[3] = math.min(rem[3], left)
  elseif d == 4 then
    rem[2] = math.min(rem[2], left)
    rem[3] = math.min(rem[3], left)
  else rem[6] = math.min(rem[6], left) end
end

local keys = {}
for k = 1, #KEYS do
  local key = {name = KEYS[k], gen = num(), ticket = num(), wins = {}, specs = {}}
  for i = 1, num() do key.wins[i] = num() end
  for i = 1, num() do key.specs[i] = {d = num(), W = num(), amount = num()} end
  keys[k] = key
end

local function bfield(w, s) return 'b' .. w.W .. ':' .. fmt(s) end
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
-- Writes bucket s (at save); the newest bucket's copy follows it.
local function bput(st, w, s, t)
  st.out[bfield(w, s)] = pack(BFMT, t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8])
  if s == w.newest then
    w.nlast = t[1]
    w.n = {t[3], t[4], t[5], t[6], t[7], t[8]}
  end
  w.dirty = true
  st.changed = true
end
local function bdel(st, w, s)
  local f = bfield(w, s)
  st.out[f] = nil
  st.gone[#st.gone + 1] = f
end

local function load(key)
  local fields = {'g', 'p', 'c1', 'c2', 'c3', 'c4'}
  for i, W in ipairs(key.wins) do fields[6 + i] = 'w' .. W end
  local qi = #fields + 1
  fields[qi] = 'q'
  local vals = redis.call('HMGET', key.name, unpack(fields))
  local st = {name = key.name, key = key, g = tonumber(vals[1]) or 0, p = tonumber(vals[2]) or 0,
              c = {}, w = {}, exists = false, out = {}, gone = {}, changed = false}
  for i = 1, 6 do if vals[i] then st.exists = true end end
  for d = 1, 4 do
    if vals[2 + d] then
      local t = nums(vals[2 + d])
      if t[3] > now then st.c[d] = {left = t[1], observed = t[2], untl = t[3]} end
    end
  end
  for i, W in ipairs(key.wins) do
    local w = {W = W, q = math.max(1, math.floor(W / 1000)), dirty = false,
               head = -1, headlast = 0, newest = -1, nlast = 0, n = zeros(), sum = zeros()}
    local v = vals[6 + i]
    if v then
      st.exists = true
      local t = {unpack_s(WFMT, v)}
      w.head, w.headlast, w.newest, w.nlast = t[1], t[2], t[3], t[4]
      w.n = {t[5], t[6], t[7], t[8], t[9], t[10]}
      w.sum = {t[11], t[12], t[13], t[14], t[15], t[16]}
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
    local p = bget(st, w, w.newest)
    p[2] = s
    bput(st, w, w.newest, p)
    w.newest = s
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
      redis.call('HSET', st.name, 'g', fmt(st.g))
      redis.call('PEXPIRE', st.name, ttl_ms(st))
    end
    return
  end
  for _, w in pairs(st.w) do
    if w.dirty then
      if w.head >= 0 then
        local n, s = w.n, w.sum
        args[#args + 1] = 'w' .. w.W
        args[#args + 1] = pack(WFMT, w.head, w.headlast, w.newest, w.nlast, n[1], n[2], n[3],
                               n[4], n[5], n[6], s[1], s[2], s[3], s[4], s[5], s[6])
      else
        st.gone[#st.gone + 1] = 'w' .. w.W
      end
    end
  end
  for f, v in pairs(st.out) do
    args[#args + 1] = f
    args[#args + 1] = v
  end
  if #st.gone > 0 then redis.call('HDEL', st.name, unpack(st.gone)) end
  if #args > 0 then redis.call('HSET', st.name, unpack(args)) end
  redis.call('PEXPIRE', st.name, ttl_ms(st))
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


-- The queue. Tickets live in the key's own hash (one hash slot, one expiry). Their
-- leases run on the server's TIME even under an injected clock: a manual clock's jump
-- must not expire a live waiter before it can refresh its ticket.
local lease_clock
local function lease_now()
  if not lease_clock then
    if ARGV[2] == '' then
      lease_clock = now
    else
      local t = redis.call('TIME')
      lease_clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
  end
  return lease_clock
end
local function tfield(seq) return 'q' .. fmt(seq) end
local function tget(st, seq)
  local v = redis.call('HGET', st.name, tfield(seq))
  if not v then return nil end
  return {unpack_s(BFMT, v)}
end
local function tput(st, seq, t)
  redis.call('HSET', st.name, tfield(seq), pack(BFMT, t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]))
  st.changed = true
end
local function qtouch(st)
  st.qdirty = true
  st.changed = true
end
local function tdrop(st, seq, t)
  redis.call('HDEL', st.name, tfield(seq))
  local q = st.q
  q.count = q.count - 1
  for i = 1, 6 do q.sum[i] = q.sum[i] - t[2 + i] end
  qtouch(st)
end
-- The caller's ticket on st (refreshed), or nil when it has none there.
local function tmine(st)
  local seq = st.key.ticket
  if seq <= 0 or not st.q then return nil end
  local t = tget(st, seq)
  if not t or t[2] ~= token then return nil end
  t[1] = lease_now() + LEASE
  tput(st, seq, t)
  return seq
end
-- The head ticket (seq, ticket) once tickets that left or whose lease ran out are
-- dropped (the caller's own is never dropped here); nil when the queue is empty.
local function qhead(st, mine)
  local q = st.q
  while q and q.count > 0 and q.head < q.nxt do
    local t = tget(st, q.head)
    if t then
      if q.head == mine or t[1] > lease_now() then return q.head, t end
      tdrop(st, q.head, t)
    end
    q.head = q.head + 1
    qtouch(st)
  end
  return nil
end
local function tjoin(st, u)
  if not st.q then st.q = {head = 1, nxt = 1, count = 0, sum = zeros()} end
  local q = st.q
  local seq = q.nxt
  q.nxt, q.count = seq + 1, q.count + 1
  for i = 1, 6 do q.sum[i] = q.sum[i] + u[i] end
  tput(st, seq, {lease_now() + LEASE, token, u[1], u[2], u[3], u[4], u[5], u[6]})
  qtouch(st)
  return seq
end
-- Drops the caller's ticket on st, and wakes the next head.
local function tleave(st, seq)
  if not seq or not st.q then return end
  local t = tget(st, seq)
  if not t or t[2] ~= token then return end
  tdrop(st, seq, t)
  qhead(st, nil)
  if st.q.count > 0 then redis.call('PUBLISH', channel, st.name) end
end

local states = {}
for k, key in ipairs(keys) do
  states[k] = load(key)
  evict_all(states[k])
end

-- The verdict on every key of a request whose usage on key k is usage_of(k).
local function judge(usage_of)
  local verdict = {status = 'fits', rem = {HUGE, HUGE, HUGE, HUGE, HUGE, HUGE}, binding = nil,
                   share = HUGE}
  for k, st in ipairs(states) do
    local v = evaluate(st, k, usage_of(k))
    if v.status == 'never' then
      return v
    elseif v.status == 'waits' then
      if verdict.status ~= 'waits' or v.wait > verdict.wait then verdict = v end
    elseif verdict.status == 'fits' then
      for i = 1, 6 do verdict.rem[i] = math.min(verdict.rem[i], v.rem[i]) end
      if v.share < verdict.share then verdict.share, verdict.binding = v.share, v.binding end
    end
  end
  return verdict
end
local function alone() return U end

if op == 'acquire' or op == 'check' or op == 'lease' or op == 'wait' then
  local mine, heads, queued = {}, true, false
  -- wait: the caller's tickets, all or none (a lost one is taken again on every key,
  -- so its place is the same on each).
  if op == 'wait' then
    local lost = false
    for k, st in ipairs(states) do
      mine[k] = tmine(st)
      if not mine[k] and keys[k].ticket > 0 then lost = true end
    end
    if lost then
      for k, st in ipairs(states) do
        if mine[k] then tdrop(st, mine[k], tget(st, mine[k])) end
        mine[k] = nil
      end
    end
  end
  local recheck = nil
  for k, st in ipairs(states) do
    local h, t = qhead(st, mine[k])
    if h and h ~= mine[k] then
      heads, queued = false, true
      local ends = math.max(1000, t[1] - lease_now())
      if not recheck or ends < recheck then recheck = ends end
    end
  end
  local verdict
  if op ~= 'wait' and queued then
    -- Behind the queue: when it fits once the queued usage has gone first.
    verdict = judge(function(k)
      local q, t = states[k].q, zeros()
      for i = 1, 6 do t[i] = U[i] + (q and q.sum[i] or 0) end
      return t
    end)
    if verdict.status == 'never' then verdict = judge(alone) end
    if verdict.status == 'fits' then
      verdict = {status = 'waits', wait = 0, limit = verdict.binding or {0, 0, 0, 0}}
    end
  elseif op == 'wait' and not heads then
    verdict = {status = 'waits', wait = recheck, limit = {0, 0, 0, 0}}
  else
    verdict = judge(alone)
  end
  if op == 'wait' then
    if verdict.status == 'waits' then
      if not mine[1] then
        for k, st in ipairs(states) do mine[k] = tjoin(st, U) end
      end
    else
      for k, st in ipairs(states) do tleave(st, mine[k]) end
      mine = {}
    end
  end
  local status, retry, limit, rem = 1, 0, verdict.binding or {0, 0, 0, 0}, verdict.rem
  if verdict.status == 'never' then
    status, retry, limit, rem = -1, -1, verdict.limit, zeros()
  elseif verdict.status == 'waits' then
    status, retry, limit = 0, verdict.wait, verdict.limit
    rem = {HUGE, HUGE, HUGE, HUGE, HUGE, HUGE}
    for _, st in ipairs(states) do
      local r = remaining_of(st)
      for i = 1, 6 do rem[i] = math.min(rem[i], r[i]) end
    end
  elseif op == 'lease' then
    local fraction = num()
    for k, st in ipairs(states) do
      local g = slice_of(st, U, fraction)
      st.slice = g
      for _, w in pairs(st.w) do record(st, w, now + extra, g) end
      for d, c in pairs(st.c) do
        c.left = c.left - dimval(g, 0, d)
        st.out['c' .. d] = fmt(math.max(0, c.left)) .. ' ' .. fmt(c.observed) .. ' ' .. fmt(c.untl)
      end
    end
  elseif op == 'acquire' or op == 'wait' then
    for _, st in ipairs(states) do
      for _, w in pairs(st.w) do record(st, w, now, U) end
      for d, c in pairs(st.c) do
        c.left = c.left - dimval(U, 0, d)
        st.out['c' .. d] = fmt(math.max(0, c.left)) .. ' ' .. fmt(c.observed) .. ' ' .. fmt(c.untl)
      end
    end
  end
  local reply = {status, math.floor(retry), limit[1], limit[2], limit[3], limit[4]}
  for _, v in ipairs(out(rem)) do reply[#reply + 1] = v end
  reply[#reply + 1] = now
  for _, st in ipairs(states) do
    reply[#reply + 1] = st.g
    save(st)
  end
  if op == 'wait' then
    for k, _ in ipairs(states) do reply[#reply + 1] = mine[k] or 0 end
    reply[#reply + 1] = heads and 1 or 0
  end
  if op == 'lease' and status == 1 then
    for _, st in ipairs(states) do
      for i = 1, 6 do reply[#reply + 1] = st.slice[i] end
      local mask = 0
      for _, spec in ipairs(st.key.specs) do mask = bit.bor(mask, bit.lshift(1, spec.d)) end
      for d, _ in pairs(st.c) do mask = bit.bor(mask, bit.lshift(1, d)) end
      reply[#reply + 1] = mask
    end
  end
  return reply
elseif op == 'adjust' or op == 'return' then
  local at = extra
  for k, st in ipairs(states) do
    if st.exists and st.g == keys[k].gen then
      for _, w in pairs(st.w) do
        if at + w.W > now then
          local s = math.floor(at / w.q)
          local t = bget(st, w, s)
          if t then
            for i = 1, 6 do
              local old = t[2 + i]
              local new = math.max(0, old - V[i]) + U[i]
              t[2 + i] = new
              w.sum[i] = w.sum[i] - old + new
            end
            bput(st, w, s, t)
          else
            local nonzero = false
            for i = 1, 6 do if U[i] > 0 then nonzero = true end end
            if nonzero then record(st, w, at, U) end
          end
        end
      end
      for d, c in pairs(st.c) do
        if op == 'return' then c.left = math.min(c.observed, c.left + dimval(V, 0, d)) end
        c.left = math.max(0, c.left - dimval(U, 0, d))
        st.out['c' .. d] = fmt(c.left) .. ' ' .. fmt(c.observed) .. ' ' .. fmt(c.untl)
        st.changed = true
      end
      save(st)
      local refund = false
      for i = 1, 6 do if V[i] > 0 then refund = true end end
      if refund then redis.call('PUBLISH', channel, st.name) end
    end
  end
  return {1}
elseif op == 'remaining' then
  local rem = {HUGE, HUGE, HUGE, HUGE, HUGE, HUGE}
  for _, st in ipairs(states) do
    local r = remaining_of(st)
    for i = 1, 6 do rem[i] = math.min(rem[i], r[i]) end
    save(st)
  end
  return out(rem)
elseif op == 'usage' then
  local st = states[1]
  local longest = nil
  for _, W in ipairs(st.key.wins) do if not longest or W > longest then longest = W end end
  if not longest then return zeros() end
  local span = extra
  if span < 0 or span >= longest then
    save(st)
    return out(st.w[longest].sum)
  end
  local best = longest
  for _, W in ipairs(st.key.wins) do if W >= span and W < best then best = W end end
  local w = st.w[best]
  local total = zeros()
  local s = w.head
  while s >= 0 do
    local t = bget(st, w, s)
    if t[1] + span > now then
      for i = 1, 6 do total[i] = total[i] + t[2 + i] end
    end
    s = t[2]
  end
  save(st)
  return out(total)
elseif op == 'leave' then
  for k, st in ipairs(states) do
    tleave(st, keys[k].ticket)
    save(st)
  end
  return {1}
elseif op == 'reset' then
  for _, st in ipairs(states) do
    if st.q then
      -- Waiters stay queued, in order: every field but the queue's goes.
      local gone = {}
      for _, f in ipairs(redis.call('HKEYS', st.name)) do
        if string.sub(f, 1, 1) ~= 'q' then gone[#gone + 1] = f end
        if #gone == 1000 then
          redis.call('HDEL', st.name, unpack(gone))
          gone = {}
        end
      end
      if #gone > 0 then redis.call('HDEL', st.name, unpack(gone)) end
    else
      redis.call('DEL', st.name)
    end
    redis.call('HSET', st.name, 'g', fmt(st.g + 1))
    redis.call('PEXPIRE', st.name, ttl_ms(st))
    redis.call('PUBLISH', channel, st.name)
  end
  return {1}
elseif op == 'pause' then
  for _, st in ipairs(states) do
    st.p = math.max(st.p, now + extra)
    st.out['p'] = fmt(st.p)
    st.changed = true
    save(st)
  end
  return {1}
elseif op == 'observe' then
  local obs = {}
  for i = 1, num() do obs[i] = {d = num(), remaining = num(), reset = num()} end
  for _, st in ipairs(states) do
    for _, o in ipairs(obs) do
      local reset = o.reset
      if reset < 0 then
        reset = nil
        for _, spec in ipairs(st.key.specs) do
          if spec.d == o.d and (not reset or spec.W < reset) then reset = spec.W end
        end
        reset = reset or 60000000
      end
      local headroom = HUGE
      for _, spec in ipairs(st.key.specs) do
        if bounds(spec.d, o.d) then
          headroom = math.min(headroom, spec.amount - dimval(st.w[spec.W].sum, 0, spec.d))
        end
      end
      for d, c in pairs(st.c) do
        if bounds(d, o.d) then headroom = math.min(headroom, c.left) end
      end
      if reset > 0 and o.remaining < headroom then
        st.c[o.d] = {left = o.remaining, observed = o.remaining, untl = now + reset}
        st.out['c' .. o.d] = fmt(o.remaining) .. ' ' .. fmt(o.remaining) .. ' ' .. fmt(now + reset)
        st.changed = true
      end
    end
    save(st)
  end
  return {1}
end
return redis.error_reply('usagewarden: unknown operation ' .. tostring(op))
