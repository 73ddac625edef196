-- Budgets shared by processes: the spend and in-flight estimates of budget
-- slots (a budget and one value of its scope), checked and recorded
-- atomically over every slot of a call.
--
-- Each slot is a hash:
--   spent      settled spend this period, nano-USD (absent: unknown, to be
--              seeded from the ledger; rolling periods keep it at 0)
--   period     start of the period `spent` counts, µs
--   reserved   estimates in flight
--   fired      how many thresholds fired this period (they fire in order)
--   e:<id>     the estimate of reservation <id>, while in flight
--   b:<n>      rolling periods: spend settled in bucket n (a 60th of the window)
-- with a sorted set of the reservations in flight scored by their deadline
-- (µs): a reservation still held at its deadline (its process died) is
-- released by the next call on the slot.
--
-- KEYS: per slot, its hash and its sorted set.
-- ARGV: op, now (µs), reservation id, amount (estimate or actual cost),
--   deadline (µs), then per slot:
--   limit, soft (0/1), blocks (0/1), period start, window (µs, 0: calendar),
--   keep (ms: the keys' lifetime), value (merge: spend in the ledger),
--   number of thresholds, thresholds (nano-USD, ascending).
-- Reply: status (1 admitted / done, 0 refused, 2 unknown spend), the index
--   of the refusing slot (1-based, 0 none), then per slot six integers:
--   spent (-1 unknown), reserved, over, rolled, fired before, fired.

local op = ARGV[1]
local now = tonumber(ARGV[2])
local rid = ARGV[3]
local amount_raw = ARGV[4]
local amount = tonumber(amount_raw)
local deadline = ARGV[5]

local slots = {}
local at = 6
for i = 1, #KEYS / 2 do
  local n = tonumber(ARGV[at + 7])
  local s = {
    hash = KEYS[2 * i - 1],
    held = KEYS[2 * i],
    limit = tonumber(ARGV[at]),
    soft = ARGV[at + 1] == '1',
    blocks = ARGV[at + 2] == '1',
    start_raw = ARGV[at + 3],
    start = tonumber(ARGV[at + 3]),
    window = tonumber(ARGV[at + 4]),
    keep = ARGV[at + 5],
    value_raw = ARGV[at + 6],
    value = tonumber(ARGV[at + 6]),
    thresholds = {},
    spent = -1, reserved = 0, over = 0, rolled = 0, fired_before = 0, fired = 0,
  }
  for j = 1, n do
    s.thresholds[j] = tonumber(ARGV[at + 7 + j])
  end
  at = at + 8 + n
  slots[i] = s
end

local function crossed(s, spent)
  local k = 0
  for j = 1, #s.thresholds do
    if spent >= s.thresholds[j] then k = j else break end
  end
  return k
end

local function bucket_width(s)
  return math.max(1, math.floor(s.window / 60))
end

-- Releases the reservations whose deadline passed (their process is gone).
local function expire(s)
  local gone = redis.call('ZRANGEBYSCORE', s.held, '-inf', now)
  for _, id in ipairs(gone) do
    local est = redis.call('HGET', s.hash, 'e:' .. id)
    if est then
      redis.call('HINCRBY', s.hash, 'reserved', '-' .. est)
      redis.call('HDEL', s.hash, 'e:' .. id)
    end
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', s.held, '-inf', now)
  end
end

-- Reads the slot's fields in one command; false when its spend is unknown.
local function read(s)
  local f = redis.call('HMGET', s.hash, 'spent', 'period', 'reserved', 'fired')
  s.stored_spent = f[1] and tonumber(f[1])
  s.stored_period = f[2] and tonumber(f[2])
  s.reserved = tonumber(f[3] or '0')
  s.fired = tonumber(f[4] or '0')
  return f[1] ~= false and f[1] ~= nil
end

-- Moves a slot just read into its current period and sets its figures;
-- `write` false only looks (a status). A rolling slot forgets the buckets
-- that slid out of its window, a bucket as a whole once its end has.
local function roll(s, write)
  if s.window > 0 then
    local w = bucket_width(s)
    local all = redis.call('HGETALL', s.hash)
    local sum = 0
    for j = 1, #all, 2 do
      local field = all[j]
      if string.sub(field, 1, 2) == 'b:' then
        local n = tonumber(string.sub(field, 3))
        if (n + 1) * w > now - s.window then
          sum = sum + tonumber(all[j + 1])
        elseif write then
          redis.call('HDEL', s.hash, field)
        end
      end
    end
    s.spent = sum
    -- Thresholds re-arm once spend slides back under them.
    local c = crossed(s, sum)
    if c < s.fired then
      s.fired = c
      if write then redis.call('HSET', s.hash, 'fired', c) end
    end
  elseif (s.stored_period or s.start) < s.start then
    s.spent = 0
    s.fired = 0
    s.rolled = 1
    if write then
      redis.call('HSET', s.hash, 'period', s.start_raw, 'spent', '0', 'fired', '0')
    end
  else
    s.spent = s.stored_spent
  end
  s.fired_before = s.fired
end

-- Adds settled spend (a string of digits) to the slot.
local function add(s, raw)
  if tonumber(raw) <= 0 then return end
  if s.window > 0 then
    local n = math.floor(now / bucket_width(s))
    redis.call('HINCRBY', s.hash, 'b:' .. n, raw)
    s.spent = s.spent + tonumber(raw)
  else
    s.spent = tonumber(redis.call('HINCRBY', s.hash, 'spent', raw))
  end
end

local function fire(s)
  local c = crossed(s, s.spent)
  if c > s.fired then
    s.fired = c
    redis.call('HSET', s.hash, 'fired', c)
  end
end

-- (PEXPIRE leaves a missing key missing.)
local function keep(s)
  redis.call('PEXPIRE', s.hash, s.keep)
  redis.call('PEXPIRE', s.held, s.keep)
end

local function reply(status, index)
  local out = {status, index}
  for _, s in ipairs(slots) do
    out[#out + 1] = s.spent
    out[#out + 1] = s.reserved
    out[#out + 1] = s.over
    out[#out + 1] = s.rolled
    out[#out + 1] = s.fired_before
    out[#out + 1] = s.fired
  end
  return out
end

if op == 'reserve' then
  local unknown = false
  for _, s in ipairs(slots) do
    expire(s)
    s.known = read(s)
    if not s.known then unknown = true end
  end
  if unknown then
    for _, s in ipairs(slots) do
      if s.known then s.spent = 0 end
    end
    return reply(2, 0)
  end
  local refused = 0
  for i, s in ipairs(slots) do
    roll(s, true)
    local committed = s.spent + s.reserved
    local over
    if s.soft then over = committed >= s.limit else over = committed + amount > s.limit end
    if over then
      s.over = 1
      if s.blocks and refused == 0 then refused = i end
    end
  end
  if refused == 0 then
    for _, s in ipairs(slots) do
      redis.call('HINCRBY', s.hash, 'reserved', amount_raw)
      redis.call('HSET', s.hash, 'e:' .. rid, amount_raw)
      redis.call('ZADD', s.held, deadline, rid)
    end
  end
  for _, s in ipairs(slots) do keep(s) end
  if refused > 0 then return reply(0, refused) end
  return reply(1, 0)
end

if op == 'settle' then
  for _, s in ipairs(slots) do
    expire(s)
    local est = redis.call('HGET', s.hash, 'e:' .. rid)
    if est then
      redis.call('HINCRBY', s.hash, 'reserved', '-' .. est)
      redis.call('HDEL', s.hash, 'e:' .. rid)
      redis.call('ZREM', s.held, rid)
    end
    -- A slot lost meanwhile is seeded from the ledger again by the next call.
    if read(s) then
      roll(s, true)
      add(s, amount_raw)
      fire(s)
      keep(s)
    end
  end
  return reply(1, 0)
end

if op == 'merge' then
  for _, s in ipairs(slots) do
    expire(s)
    if read(s) then
      roll(s, true)
      if s.value > s.spent then
        add(s, string.format('%d', s.value - s.spent))
      end
      fire(s)
    else
      redis.call('HSET', s.hash, 'period', s.start_raw, 'spent', '0')
      s.spent = 0
      add(s, s.value_raw)
      -- Thresholds passed before the slot was known stay quiet.
      s.fired = crossed(s, s.spent)
      s.fired_before = s.fired
      redis.call('HSET', s.hash, 'fired', s.fired)
    end
    keep(s)
  end
  return reply(1, 0)
end

if op == 'figures' then
  for _, s in ipairs(slots) do
    expire(s)
    if read(s) then roll(s, false) end
  end
  return reply(1, 0)
end

return redis.error_reply('usagewarden budgets: unknown op ' .. tostring(op))
