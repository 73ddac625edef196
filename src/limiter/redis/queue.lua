-- usagewarden: the exact Redis limiter, part 2 of 4 (after limiter.lua): the queue of
-- waiters in each key's hash. The layout of the fields is at the top of limiter.lua.

-- The queue. Tickets live in the key's own hash (one hash slot, one expiry). Their
-- leases run on the server's TIME even under an injected clock: a manual clock's jump
-- must not expire a live waiter before it can refresh its ticket.
local function lease_now()
  if not lease_clock then
    if server_clock then
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
