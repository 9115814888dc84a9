-- gateway-ratelimit: decides every limit of one request atomically.
-- A transcription of src/algorithm.rs (same integer microseconds, same rules); the conformance
-- test runs the same sequence through this script and through the in-memory store.
--
-- KEYS[i]   one state key per limit
-- ARGV[1]   now in Unix microseconds, or "" to read the server's clock
-- ARGV[2]   throttling allowance in microseconds (0: refuse at once)
-- ARGV[3]   "d" to decide one request, "l" to lease tokens (hybrid store)
-- then five values per key: kind, a, b, need, want
--   kind "g" (GCRA rate):      a = emission interval (µs), b = burst
--   kind "q" (calendar quota): a = limit, b = window ("min", "h", "day", "month")
--   need = the request's cost; want = tokens to lease ("l" only; at least need)
-- Returns now, then eight values per key:
--   allowed (0/1), limit, window (µs), remaining, reset (µs), retry (µs, -1 = never), delay (µs),
--   granted (tokens charged). For a lease granted short of want, retry is when a full lease will
--   be free.
-- Nothing is written unless every limit admits; every key written gets an expiry.

-- Redis < 5 replicates scripts verbatim and refuses writes after TIME without this.
if redis.replicate_commands then redis.replicate_commands() end

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local max_wait = tonumber(ARGV[2])
local lease = ARGV[3] == 'l'

local DAY = 86400000000
local floor = math.floor

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = m + 9
  if m > 2 then mp = m - 3 end
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp - 9
  if mp < 10 then m = mp + 3 end
  if m <= 2 then y = y + 1 end
  return y, m
end

local function bounds(w)
  if w == 'month' then
    local y, m = civil_from_days(floor(now / DAY))
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return y * 12 + m - 1, days_from_civil(y, m, 1) * DAY, days_from_civil(ny, nm, 1) * DAY
  end
  local len = DAY
  if w == 'min' then len = 60000000 elseif w == 'h' then len = 3600000000 end
  local n = floor(now / len)
  return n, n * len, (n + 1) * len
end

local out = { now }
local writes = {}
local all = true
for i = 1, #KEYS do
  local j = 3 + (i - 1) * 5
  local kind, a, b = ARGV[j + 1], tonumber(ARGV[j + 2]), ARGV[j + 3]
  local need, want = tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  local allowed, limit, window, remaining, reset, retry, delay, granted = 0, 0, 0, 0, 0, -1, 0, 0
  if kind == 'g' then
    local t, burst = a, tonumber(b)
    local tau = t * burst
    local c = math.min(need, burst + 1)
    local tat = now
    local v = redis.call('GET', KEYS[i])
    if v then tat = math.max(tonumber(v), now) end
    limit, window = burst, tau
    remaining = floor((tau - (tat - now)) / t)
    reset = tat - now
    if c <= burst then
      if lease then
        -- Lease as many tokens as are free now (at most want), if at least need are.
        local k = math.min(want, remaining)
        if k >= c then
          allowed, granted = 1, k
          local new_tat = tat + t * k
          remaining = floor((tau - (new_tat - now)) / t)
          reset = new_tat - now
          -- A short lease: say when a full one will be free, so the caller waits for it.
          if k < want then retry = new_tat + t * want - tau - now end
          writes[#writes + 1] = { 'g', KEYS[i], new_tat, new_tat - now }
        else
          retry = tat + t * c - tau - now
        end
      else
        local new_tat = tat + t * c
        local wait = new_tat - tau - now
        if wait > max_wait then
          retry = wait
        else
          allowed, granted = 1, c
          if wait > 0 then delay = wait end
          remaining = floor((tau - (new_tat - now)) / t)
          reset = new_tat - now
          writes[#writes + 1] = { 'g', KEYS[i], new_tat, new_tat - now }
        end
      end
    end
  else
    local id, start, stop = bounds(b)
    local used = 0
    local h = redis.call('HMGET', KEYS[i], 'w', 'u')
    if h[1] and tonumber(h[1]) == id then used = tonumber(h[2]) end
    limit, window = a, stop - start
    remaining = math.max(a - used, 0)
    reset = stop - now
    if need <= a then
      local k = need
      if lease then k = math.min(want, a - used) end
      if k >= need and used + k <= a then
        allowed, granted = 1, k
        remaining = a - used - k
        -- A short lease empties the quota: nothing more until the window ends.
        if k < want then retry = stop - now end
        writes[#writes + 1] = { 'q', KEYS[i], id, used + k, stop }
      else
        retry = stop - now
      end
    end
  end
  if remaining < 0 then remaining = 0 end
  if allowed == 0 then all = false end
  local row = { allowed, limit, window, remaining, reset, retry, delay, granted }
  for _, x in ipairs(row) do out[#out + 1] = x end
end

if all then
  for _, w in ipairs(writes) do
    if w[1] == 'g' then
      redis.call('SET', w[2], string.format('%.0f', w[3]), 'PX', math.max(1, math.ceil(w[4] / 1000)))
    else
      redis.call('HSET', w[2], 'w', string.format('%.0f', w[3]), 'u', string.format('%.0f', w[4]))
      -- Kept a minute past the window's end (relative to this script's now, whatever clock it
      -- came from), so a late reader with a skewed clock still sees it.
      redis.call('PEXPIRE', w[2], string.format('%.0f', math.ceil((w[5] - now) / 1000) + 60000))
    end
  end
end
-- Refused: nothing is charged (each limit still reports its own outcome).
return out
