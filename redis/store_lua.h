/*
 * store_lua.h - the server side of the "redis" replay store: Lua scripts
 * that Redis runs atomically, so each queue operation is all or nothing
 * whatever happens to the client (store_redis.c describes the keys).
 *
 * Every script gets the same KEYS (lane 1..3 streams, delayed, leases,
 * keys, done, dead, bytes, seq, finished) and starts with the same
 * helpers (SPR_LUA_HELPERS) and housekeeping (SPR_LUA_HOUSEKEEPING; the
 * store joins the three parts of each: ISO C promises string literals of
 * 4095 bytes only):
 * backoffs that are due go back to their lane's tail, and expired leases go
 * back too as a failed attempt (or to the dead stream at max_attempts or
 * past the deadline), a bounded number per call. Times are milliseconds of
 * the caller's clock (ARGV[1] now, ARGV[2] max_attempts, ARGV[3] group,
 * ARGV[4] max_dead, ARGV[5] max_acked_keys).
 *
 * Redis does not undo what a script wrote before it failed, so a script
 * must not fail halfway, e.g. on a field an entry lacks: every entry read
 * from a lane or the delayed set is checked before use (malformed(): k a
 * key of 1..128 bytes, a and dl whole numbers, l a lane, e beginning as an
 * envelope of this format or a later one does), and one
 * that is not as an enqueue writes it goes to the dead stream with why
 * "malformed". Such an entry was written by something else, so it holds
 * no bytes of K_BYTES and no key of K_KEYS: its dead letter, and its
 * trimming from the dead stream, leave both alone (forget()). dead() and
 * past() take any entry.
 */
#ifndef SPI_REDIS_STORE_LUA_H
#define SPI_REDIS_STORE_LUA_H

/* An envelope's bytes (store_redis.c's codec) begin with SPR_ENV_TAG and a
 * version byte: SPR_ENV_VERSION in the format this build writes and
 * reads, a higher one in a later format, which only a newer process reads
 * (a claim gives such an entry back: SPR_LUA_CLAIM). */
#define SPR_ENV_TAG "SPE"
#define SPR_ENV_VERSION "1"

#define SPR_LUA_HELPERS                                                        \
  "local now = tonumber(ARGV[1])\n"                                            \
  "local maxatt = tonumber(ARGV[2])\n"                                         \
  "local group = ARGV[3]\n"                                                    \
  "local maxdead = tonumber(ARGV[4])\n"                                        \
  "local maxdone = tonumber(ARGV[5])\n"                                        \
  "local K_DELAYED, K_LEASES, K_KEYS, K_DONE, K_DEAD, K_BYTES, K_SEQ =\n"      \
  "  KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]\n"         \
  "local K_FIN = KEYS[11]\n"                                                   \
  "local function fields(arr)\n"                                               \
  "  local f = {}\n"                                                           \
  "  for i = 1, #arr, 2 do f[arr[i]] = arr[i + 1] end\n"                       \
  "  return f\n"                                                               \
  "end\n"                                                                      \
  "local function str(x)\n"                                                    \
  "  if type(x) == 'string' then return x end\n"                               \
  "  if type(x) == 'number' then return tostring(x) end\n"                     \
  "  return ''\n"                                                              \
  "end\n"                                                                      \
  "local function version(e)\n"                                                \
  "  local v = string.byte(e, 4)\n"                                            \
  "  if string.sub(e, 1, 3) ~= '" SPR_ENV_TAG "' or not v or\n"                \
  "     v < string.byte('" SPR_ENV_VERSION "') then return nil end\n"          \
  "  return v\n"                                                               \
  "end\n"                                                                      \
  "local mine = string.byte('" SPR_ENV_VERSION "')\n"                          \
  "local function malformed(f)\n"                                              \
  "  for _, n in ipairs({'k', 'a', 'dl', 'l', 'e'}) do\n"                      \
  "    if type(f[n]) ~= 'string' then return 'no field ' .. n end\n"           \
  "  end\n"                                                                    \
  "  if #f.k == 0 or #f.k > 128 then\n"                                        \
  "    return 'a key of ' .. #f.k .. ' bytes'\n"                               \
  "  end\n"                                                                    \
  "  if not string.match(f.a, '^%d+$') then\n"                                 \
  "    return 'field a is not a count'\n"                                      \
  "  end\n"                                                                    \
  "  if not string.match(f.dl, '^%d+$') then\n"                                \
  "    return 'field dl is not a time'\n"                                      \
  "  end\n"                                                                    \
  "  if not string.match(f.l, '^[123]$') then\n"                               \
  "    return 'field l is not a lane'\n"                                       \
  "  end\n"                                                                    \
  "  if not version(f.e) then return 'field e is not an envelope' end\n"       \
  "  return nil\n"                                                             \
  "end\n"                                                                      \
  "local function remember(k)\n"                                               \
  "  if type(k) ~= 'string' or k == '' then return end\n"                      \
  "  redis.call('HDEL', K_KEYS, k)\n"                                          \
  "  if maxdone <= 0 then return end\n"                                        \
  "  redis.call('ZADD', K_DONE, redis.call('INCR', K_SEQ), k)\n"               \
  "  local n = redis.call('ZCARD', K_DONE)\n"                                  \
  "  if n > maxdone then\n"                                                    \
  "    redis.call('ZREMRANGEBYRANK', K_DONE, 0, n - maxdone - 1)\n"            \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "local function gone(f)\n"                                                   \
  "  if redis.call('DECRBY', K_BYTES, #str(f.e) + #str(f.k)) < 0 then\n"       \
  "    redis.call('SET', K_BYTES, 0)\n"                                        \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "local function forget(f)\n"                                                 \
  "  if f.why ~= 'malformed' then gone(f) remember(f.k) end\n"                 \
  "end\n"                                                                      \
  "local function dead(f, att, why)\n"                                         \
  "  f.why = why\n"                                                            \
  "  if maxdead <= 0 then forget(f) return end\n"                              \
  "  if why ~= 'malformed' then redis.call('HSET', K_KEYS, f.k, 'dead') end\n" \
  "  redis.call('XADD', K_DEAD, '*', 'k', str(f.k), 'a', str(att),\n"          \
  "    'dl', str(f.dl), 'l', str(f.l), 'why', why, 'e', str(f.e))\n"           \
  "  while redis.call('XLEN', K_DEAD) > maxdead do\n"                          \
  "    local old = redis.call('XRANGE', K_DEAD, '-', '+', 'COUNT', 1)[1]\n"    \
  "    forget(fields(old[2]))\n"                                               \
  "    redis.call('XDEL', K_DEAD, old[1])\n"                                   \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "local function past(f)\n"                                                   \
  "  local dl = tonumber(f.dl)\n"                                              \
  "  return dl ~= nil and dl > 0 and now >= dl\n"                              \
  "end\n"                                                                      \
  "local function requeue(f, att)\n"                                           \
  "  local id = redis.call('XADD', KEYS[tonumber(f.l)], '*', 'k', f.k,\n"      \
  "    'a', att, 'dl', f.dl, 'l', f.l, 'e', f.e)\n"                            \
  "  redis.call('HSET', K_KEYS, f.k, f.l .. ':' .. id)\n"                      \
  "end\n"                                                                      \
  "local function take(lane, id)\n"                                            \
  "  local key = KEYS[tonumber(lane)]\n"                                       \
  "  local r = redis.call('XRANGE', key, id, id)\n"                            \
  "  redis.call('XACK', key, group, id)\n"                                     \
  "  redis.call('XDEL', key, id)\n"                                            \
  "  if #r == 0 then return nil end\n"                                         \
  "  return fields(r[1][2])\n"                                                 \
  "end\n"

#define SPR_LUA_HOUSEKEEPING                                                   \
  "local expired = 0\n"                                                        \
  "local function housekeeping()\n"                                            \
  "  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now,\n"        \
  "    'LIMIT', 0, 128)\n"                                                     \
  "  for _, m in ipairs(due) do\n"                                             \
  "    redis.call('ZREM', K_DELAYED, m)\n"                                     \
  "    local ok, f = pcall(cmsgpack.unpack, m)\n"                              \
  "    if not ok or type(f) ~= 'table' then f = {e = m} end\n"                 \
  "    if malformed(f) then dead(f, f.a, 'malformed')\n"                       \
  "    elseif past(f) then dead(f, f.a, 'deadline')\n"                         \
  "    else requeue(f, f.a) end\n"                                             \
  "  end\n"                                                                    \
  "  local exp = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now,\n"         \
  "    'LIMIT', 0, 128)\n"                                                     \
  "  for _, m in ipairs(exp) do\n"                                             \
  "    redis.call('ZREM', K_LEASES, m)\n"                                      \
  "    local lane, id = string.match(m, '^([123]):(.+)$')\n"                   \
  "    local f = lane and take(lane, id)\n"                                    \
  "    if f then expired = expired + 1 end\n"                                  \
  "    if f and malformed(f) then dead(f, f.a, 'malformed')\n"                 \
  "    elseif f then\n"                                                        \
  "      local att = tonumber(f.a) + 1\n"                                      \
  "      if att >= maxatt or past(f) then\n"                                   \
  "        dead(f, att, past(f) and 'deadline' or 'attempts')\n"               \
  "      else requeue(f, att) end\n"                                           \
  "    end\n"                                                                  \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "housekeeping()\n"

/* ARGV[6] key, [7] lane, [8] attempts, [9] deadline ms, [10] blob,
 * [11] max_bytes. -> {expired, status}: 0 added, 1 duplicate, 2 full (then held bytes). */
#define SPR_LUA_ENQUEUE                                                        \
  "local k = ARGV[6]\n"                                                        \
  "if redis.call('HEXISTS', K_KEYS, k) == 1 or\n"                              \
  "   redis.call('ZSCORE', K_DONE, k) then return {expired, 1} end\n"          \
  "local size = #ARGV[10] + #k\n"                                              \
  "local held = tonumber(redis.call('GET', K_BYTES) or '0')\n"                 \
  "local maxb = tonumber(ARGV[11])\n"                                          \
  "if maxb > 0 and held + size > maxb then return {expired, 2, held} end\n"    \
  "redis.call('INCRBY', K_BYTES, size)\n"                                      \
  "requeue({k = k, l = ARGV[7], dl = ARGV[9], e = ARGV[10]}, ARGV[8])\n"       \
  "return {expired, 0}\n"

/* ARGV[6] consumer, [7] lease end ms, [8] class mask.
 * -> {expired} (nothing ready) or {expired, lane, id, key, attempts, blob},
 * or {expired, 0, id, key, what is wrong} for a malformed entry, which was
 * dead-lettered (the claim's answer is an error; the next claim goes on).
 * Entries past their deadline met on the way are dead-lettered, and those
 * whose envelope is in a later format (written by a newer process during a
 * rolling upgrade) are given back, untried: to the delayed set until this
 * claim's lease would end, attempts unchanged, so a newer process can take
 * them and this one does not meet them again at once. At most 128 of both
 * a call, so one call stays short after an outage left many behind: with
 * that many, it answers "nothing ready" and the next claim goes on. */
#define SPR_LUA_CLAIM                                                          \
  "local mask = tonumber(ARGV[8])\n"                                           \
  "local budget = 128\n"                                                       \
  "local function unread(lane, id)\n"                                          \
  "  redis.call('XACK', KEYS[lane], group, id)\n"                              \
  "  redis.call('XDEL', KEYS[lane], id)\n"                                     \
  "end\n"                                                                      \
  "for lane = 1, 3 do\n"                                                       \
  "  if math.floor(mask / (2 ^ lane)) % 2 == 1 then\n"                         \
  "    while budget > 0 do\n"                                                  \
  "      local r = redis.call('XREADGROUP', 'GROUP', group, ARGV[6],\n"        \
  "        'COUNT', 1, 'STREAMS', KEYS[lane], '>')\n"                          \
  "      if not r or #r == 0 or #r[1][2] == 0 then break end\n"                \
  "      local id = r[1][2][1][1]\n"                                           \
  "      local f = fields(r[1][2][1][2])\n"                                    \
  "      local bad = malformed(f)\n"                                           \
  "      if bad then\n"                                                        \
  "        unread(lane, id)\n"                                                 \
  "        dead(f, f.a, 'malformed')\n"                                        \
  "        return {expired, 0, id, str(f.k), bad}\n"                           \
  "      elseif past(f) then\n"                                                \
  "        unread(lane, id)\n"                                                 \
  "        dead(f, f.a, 'deadline')\n"                                         \
  "        budget = budget - 1\n"                                              \
  "      elseif version(f.e) > mine then\n"                                    \
  "        unread(lane, id)\n"                                                 \
  "        redis.call('ZADD', K_DELAYED, ARGV[7], cmsgpack.pack(f))\n"         \
  "        redis.call('HSET', K_KEYS, f.k, 'delayed')\n"                       \
  "        budget = budget - 1\n"                                              \
  "      else\n"                                                               \
  "        redis.call('ZADD', K_LEASES, ARGV[7], lane .. ':' .. id)\n"         \
  "        return {expired, lane, id, f.k, f.a, f.e}\n"                        \
  "      end\n"                                                                \
  "    end\n"                                                                  \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "return {expired}\n"

/* ARGV[6] lane, [7] id, [8] what: 0 ack, 1 retry, 2 dead;
 * [9] attempts, [10] visible ms, [11] the claim's lease ms, [12] why a
 * dead letter is one ('attempts', 'deadline', 'refused': the library
 * refused the envelope, 'malformed': it is not one).
 * -> {expired, status}: 0 done, 1 stale.
 * A finish is remembered in K_FIN ("lane:id:what", by when it is
 * forgotten) for the claim's lease length after it, so the same finish
 * repeated (its answer was lost on the way) answers done again, and only
 * that one: a claim whose lease ended was put back under a new id, and
 * another finish of a finished claim is stale. Each finish forgets those
 * that are due, and K_FIN holds max_acked_keys (ARGV[5]) finishes at most:
 * beyond, those due to be forgotten first go first (a finish forgotten
 * early only means its repeat answers stale, as before K_FIN; with
 * max_acked_keys 0 none is kept). */
#define SPR_LUA_SETTLE                                                         \
  "local member = ARGV[6] .. ':' .. ARGV[7]\n"                                 \
  "local fin = member .. ':' .. ARGV[8]\n"                                     \
  "redis.call('ZREMRANGEBYSCORE', K_FIN, '-inf', now)\n"                       \
  "if redis.call('ZREM', K_LEASES, member) == 0 then\n"                        \
  "  if redis.call('ZSCORE', K_FIN, fin) then return {expired, 0} end\n"       \
  "  return {expired, 1}\n"                                                    \
  "end\n"                                                                      \
  "local f = take(ARGV[6], ARGV[7])\n"                                         \
  "if not f then return {expired, 1} end\n"                                    \
  "local what = ARGV[8]\n"                                                     \
  "if malformed(f) then dead(f, f.a, 'malformed')\n"                          \
  "elseif what == '0' then gone(f) remember(f.k)\n"                            \
  "elseif what == '2' then dead(f, ARGV[9], ARGV[12])\n"                       \
  "else\n"                                                                     \
  "  f.a = ARGV[9]\n"                                                          \
  "  redis.call('ZADD', K_DELAYED, ARGV[10], cmsgpack.pack(f))\n"              \
  "  redis.call('HSET', K_KEYS, f.k, 'delayed')\n"                             \
  "end\n"                                                                      \
  "if maxdone > 0 then\n"                                                      \
  "  redis.call('ZADD', K_FIN, now + tonumber(ARGV[11]), fin)\n"               \
  "  local n = redis.call('ZCARD', K_FIN)\n"                                   \
  "  if n > maxdone then\n"                                                    \
  "    redis.call('ZREMRANGEBYRANK', K_FIN, 0, n - maxdone - 1)\n"             \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "return {expired, 0}\n"

/* -> {expired, ready1, ready2, ready3, leased, delayed, dead, bytes} */
#define SPR_LUA_STATS                                                          \
  "local out = {expired}\n"                                                    \
  "for lane = 1, 3 do\n"                                                       \
  "  local n = redis.call('XLEN', KEYS[lane])\n"                               \
  "  local p = redis.call('XPENDING', KEYS[lane], group)\n"                    \
  "  out[#out + 1] = n - tonumber(p[1])\n"                                     \
  "end\n"                                                                      \
  "out[#out + 1] = redis.call('ZCARD', K_LEASES)\n"                            \
  "out[#out + 1] = redis.call('ZCARD', K_DELAYED)\n"                           \
  "out[#out + 1] = redis.call('XLEN', K_DEAD)\n"                               \
  "out[#out + 1] = tonumber(redis.call('GET', K_BYTES) or '0')\n"              \
  "return out\n"

/* KEYS[1..3] the lanes; ARGV[1] the group, then pairs of a lane (1..3)
 * and a consumer's name. Removes each of these consumers that has nothing
 * pending in that lane, so those of processes gone do not pile up (every
 * process reads as a consumer of its own). Nothing pending, nothing is
 * lost (leases live in the leases set), and a consumer that reads again is
 * made again. -> the number removed.
 * The store picks them (store_redis.c: idle for consumer_idle_ms, at most
 * 100 a time) from XINFO CONSUMERS, which lists every consumer of a group
 * and cannot list part of one: it runs as a plain command, outside any
 * script, so this script's work is bounded by the number picked (an
 * XPENDING of one entry and an XGROUP DELCONSUMER each). Pending is
 * checked again here: a consumer may have read in between. */
#define SPR_LUA_REAP                                                           \
  "local n = 0\n"                                                              \
  "for i = 2, #ARGV - 1, 2 do\n"                                               \
  "  local key, name = KEYS[tonumber(ARGV[i])], ARGV[i + 1]\n"                 \
  "  if #redis.call('XPENDING', key, ARGV[1], '-', '+', 1, name) == 0 then\n"  \
  "    redis.call('XGROUP', 'DELCONSUMER', key, ARGV[1], name)\n"              \
  "    n = n + 1\n"                                                            \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "return n\n"

/* Housekeeping only. -> {expired} */
#define SPR_LUA_TICK "return {expired}\n"

#endif /* SPI_REDIS_STORE_LUA_H */
