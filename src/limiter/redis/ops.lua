-- usagewarden: the exact Redis limiter, part 4 of 4 (after limiter.lua, queue.lua and
-- fast.lua): the operations. The arguments and replies are at the top of limiter.lua.

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

-- The operation of the call, on the states of its keys.
local function operate()
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
        for k, st in ipairs(states) do
        local g = slice_of(st, U, FRACTION)
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
      redis.call('HSET', st.name, 'm', pack(MFMT, st.g + 1, 0, st.q and QUEUED or 0, -1))
      redis.call('PEXPIRE', st.name, ttl_ms(st))
      redis.call('PUBLISH', channel, st.name)
    end
    return {1}
  elseif op == 'pause' then
    for _, st in ipairs(states) do
      st.p = math.max(st.p, now + extra)
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
end

-- One call: the common admission decides from the fields it read, or the general path
-- loads every key's state from them, drops what left its windows and operates.
local function main(KEYS, ARGV)
  local o, reply, at = ARGV[1], nil, nil
  if o == 'acquire' or o == 'check' then
    reply, at = admit_fast(KEYS, ARGV, o == 'check')
    if reply then return reply end
  end
  begin(KEYS, ARGV, at)
  states = {}
  for k, key in ipairs(keys) do
    states[k] = load(key, redis.call('HMGET', key.name, unpack(key.limits.fields)))
    evict_all(states[k])
  end
  reply = operate()
  if reply[1] == nil then return reply end -- an error
  return packed(reply)
end
