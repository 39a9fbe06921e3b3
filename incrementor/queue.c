/* A web node (--queue redis://HOST:PORT): the loop threads sum and
 * acknowledge increments into windows exactly as the single process does
 * (service.c); this thread, in place of the SQLite writer, hands each
 * window's sums to Redis in one call of the script below, which the writer
 * (consume.c) later applies to SQLite.
 *
 * Redis is the serialization point. A script runs atomically (no other
 * command runs in between), and with `appendonly yes` its effects are
 * written to the append-only file as one MULTI/EXEC block, replayed whole
 * or not at all on restart. One call, for one batch of one node:
 *   - applies the batch's acknowledged ("fast") sums to the hash `values`,
 *     which holds every counter's running value: the value the database
 *     will hold once the writer has applied every entry up to this one;
 *   - decides each deferred request (durable mode: all of them; buffered:
 *     those with an Idempotency-Key or beyond the fast bound) in arrival
 *     order against the running values, whole or not at all;
 *   - records each new Idempotency-Key with the answer it got;
 *   - XADDs one stream entry with everything applied (node, batch number,
 *     acknowledgement time, increments, and the key/delta lines);
 *   - records the node's batch number and answers (node:<id>).
 *
 * Exactly once between the node and Redis. A batch has a number (seq), one
 * more than the node's previous one, and is kept, unchanged, until a reply
 * to it arrives: on a lost connection, a timeout or an error reply the node
 * sends the same batch again, and the script, finding seq already recorded
 * for the node, applies nothing and answers what it answered the first
 * time. So a batch is applied once whether the reply, the request or Redis
 * itself was lost. A node that restarts takes a new id (INCR, with a random
 * 64-bit nonce: a Redis that lost its data starts the counter again, and
 * must not give a new node the id, hence the batch numbers, of one alive),
 * so its numbers start afresh.
 *
 * Durable mode: the 200 goes out only after the reply, and the node refuses
 * to start unless Redis has appendonly yes and appendfsync always, under
 * which Redis fsyncs the AOF before replying; it checks them again on every
 * new connection, and holds its batch, unanswered, while they fail. A SIGKILL of Redis then keeps
 * every batch that was answered; one that was not answered is either in
 * the AOF (the retry is answered from node:<id>) or not (the retry applies
 * it). A SIGKILL of the node loses only unanswered requests.
 *
 * The int64 rule. Lua in Redis has only doubles, so the script never adds:
 * HINCRBY adds exactly and refuses to leave int64, and the script compares
 * the values' decimal strings exactly (cmp below). A deferred request's
 * result must stay in int64 shrunk by a headroom H for what other nodes
 * have acknowledged and not yet sent; fast acknowledgements must never
 * overflow. As in flush.c:
 *   1. A buffered node acknowledges at once only while, at its last reply,
 *      no running value was outside +-2^61 ('red', counted exactly by the
 *      script) and its lease runs (below), and only up to 2^40 of |v| per
 *      key, per thread, per window. It holds at most one unanswered batch
 *      and its open windows: 2^51 per key. From the moment a value turns
 *      red, each node adds at most that much before its next reply closes
 *      its fast path: with at most 1024 live buffered nodes, 2^61 + 2^50 +
 *      1024 * 2^51 < 2^63.
 *   2. Deferred requests are decided in the script against the exact running
 *      value, with H = (live buffered nodes) * 2^51 (each is counted, this
 *      one included; durable nodes never acknowledge at once and count 0).
 *      With only durable nodes 422 is exact; with buffered ones a request
 *      whose result would come within H of a limit is refused.
 *   3. Live buffered nodes are counted from leases in `nodes`: each call of
 *      a buffered node renews its lease to Redis's now + --lease-ms (granted
 *      while fewer than 1024 leases run). The node acknowledges at once only
 *      until the time it sent that call + --lease-ms / 2 (checked on the
 *      request path), so everything it acknowledged was acknowledged while
 *      its lease ran. If a batch arrives after its lease expired (the node
 *      was cut off from Redis for seconds), the script drops its fast sums
 *      ("fenced": counted and logged as lost, as a crash of the node would
 *      lose them in buffered mode) instead of applying increments no
 *      decision made room for. The same holds for the increments the node
 *      acknowledged under that lease and had not sent yet (its open
 *      windows): when a reply says the batch was fenced or the lease had
 *      lapsed before this call (then granted afresh), the node closes its
 *      fast path, takes its windows and sends them marked so (mode 'l'):
 *      the script drops their fast sums likewise, and the fast path opens
 *      again only with the reply to that batch. So a counted node's unseen
 *      deltas are bounded as in 1. and an uncounted node's never get
 *      applied, even after it is counted again.
 *
 * Idempotency keys. idem:<key> holds "fingerprint status", set in the call
 * that applies the request and expiring after --idempotency-window. Calls
 * are serialized, so a key is seen by every later call of every node: the
 * first request is decided and recorded, every later one (the same batch,
 * another node, a retry after a crash of the node) is answered from the
 * record, 422 if its fingerprint differs. The record and the increment are
 * in one atomic call, hence in Redis, and in the AOF, together or not at
 * all. The bound --idempotency-keys holds as in the database: idem_order
 * ranks the keys by the time they were recorded, and the call that records
 * one drops those past the window from it and, beyond the bound, the
 * oldest with their records (evicted, as the single process counts them),
 * at most 1000 more than it recorded: a bound lowered a lot is reached over
 * several calls rather than in one that would hold Redis up.
 *
 * The writer must start from the same values as `values`: the database and
 * Redis start empty together, or the database holds exactly what Redis's
 * stream has delivered (consume.c). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/reactor.h"
#include "redis.h"
#include "service.h"

#define HEARTBEAT_MS 2000  /* a node calls Redis at least this often (its lease, the lag), */
#define HEARTBEATS   4     /* and at least this often per lease */
#define RETRY_MS     200   /* pause before sending a batch again */
#define FINAL_MS     15000 /* on exit, a batch is tried for this long */
#define NODES_MAX    "1024"
#define LOG_EVERY_MS 1000 /* repeated errors are logged at most this often */

/* The script (Redis 7's shebang: out of memory is refused before it runs,
 * never half-way). ARGV: node, seq, mode (b|d, or l: buffered, its fast sums
 * acknowledged under a lease that lapsed, dropped), ack time (wall ms,
 * 0 = now), idempotency window (ms), idempotency bound (keys), lease (ms),
 * fast increments, fast pairs n, the fast acknowledgements' times ("ms:count ..."
 * after the ack time), then n (key, delta) pairs, then per deferred request:
 * its number of items, its Idempotency-Key ('' for none), its fingerprint,
 * and its (key, delta) pairs. Returns {replayed, answers (one character per
 * deferred request), entry id, red, lease granted, fast pairs dropped
 * (fenced), fast pairs refused (overflow: never, by 1.), the writer's lag, 1
 * when the lease had lapsed before this call (buffered), idempotency keys
 * evicted by the bound, idempotency keys kept (-1: none recorded, not
 * counted)}. */
static const char script[] =
    "#!lua\n"
    "local P = '" RDS_PREFIX "'\n"
    "local V, NK, NODE = P .. 'values', P .. 'nodes', P .. 'node:' .. ARGV[1]\n"
    "local node, seqs, mode, a0 = ARGV[1], ARGV[2], ARGV[3], ARGV[4]\n"
    "local seq = tonumber(seqs)\n"
    "local window, bound, lease = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local G = '2305843009213693952'\n"
    "local function cmpabs(a, b)\n"
    "  if #a ~= #b then return #a < #b and -1 or 1 end\n"
    "  if a == b then return 0 end\n"
    "  return a < b and -1 or 1\n"
    "end\n"
    "local function cmp(a, b)\n"
    "  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'\n"
    "  if na ~= nb then return na and -1 or 1 end\n"
    "  local c = cmpabs(na and a:sub(2) or a, nb and b:sub(2) or b)\n"
    "  return na and -c or c\n"
    "end\n"
    "local function red(s)\n"
    "  if not s then return 0 end\n"
    "  if s:sub(1, 1) == '-' then s = s:sub(2) end\n"
    "  return cmpabs(s, G) > 0 and 1 or 0\n"
    "end\n"
    "local live\n"
    "local function count_live()\n"
    "  if live then return live end\n"
    "  local all = redis.call('HGETALL', NK)\n"
    "  live = 0\n"
    "  for i = 1, #all, 2 do\n"
    "    if tonumber(all[i + 1]) >= now then live = live + 1\n"
    "    else redis.call('HDEL', NK, all[i]) end\n"
    "  end\n"
    "  return live\n"
    "end\n"
    "local exp = redis.call('HGET', NK, node)\n"
    "local leased = exp and tonumber(exp) >= now\n"
    "local granted, fresh = 0, (mode ~= 'd' and not leased) and 1 or 0\n"
    "if mode ~= 'd' and (leased or count_live() < " NODES_MAX ") then\n"
    "  redis.call('HSET', NK, node, tostring(now + lease))\n"
    "  if live and not leased then live = live + 1 end\n"
    "  granted = 1\n"
    "end\n"
    "local prev = redis.call('HMGET', NODE, 'seq', 'out', 'id', 'lost', 'ev')\n"
    "local rc = redis.call('GET', P .. 'red') or '0'\n"
    "local lag = redis.call('GET', P .. 'lag') or ''\n"
    "if prev[1] and tonumber(prev[1]) > seq then\n"
    "  return redis.error_reply('batch ' .. seqs .. ' of node ' .. node .. ' is stale')\n"
    "end\n"
    "if prev[1] and tonumber(prev[1]) == seq then\n"
    "  return {1, prev[2], prev[3], tonumber(rc), granted, tonumber(prev[4]) or 0, 0, lag,\n"
    "          fresh, tonumber(prev[5]) or 0, -1}\n"
    "end\n"
    "local lines, count, rd, lost, refused = {}, 0, 0, 0, 0\n"
    "local function neg(v) if v:sub(1, 1) == '-' then return v:sub(2) end return '-' .. v end\n"
    "local function incr(k, v)\n"
    "  local r = redis.pcall('HINCRBY', V, k, v)\n"
    "  if type(r) == 'table' then return nil end\n"
    "  return r\n"
    "end\n"
    "local function decr(k, v)\n"
    "  if v == '-9223372036854775808' then\n"
    "    redis.call('HINCRBY', V, k, '9223372036854775807')\n"
    "    redis.call('HINCRBY', V, k, '1')\n"
    "  elseif v ~= '0' then redis.call('HINCRBY', V, k, neg(v)) end\n"
    "end\n"
    "local NLO, NHI = 2305843009213693952 - 4096, 2305843009213693952 + 4096\n"
    "local function near(x) return x >= NLO and x <= NHI end\n"
    "local function red_change(k, v, d)\n"
    "  local a, b = math.abs(d), math.abs(d - tonumber(v))\n"
    "  if not near(a) and not near(b) then\n"
    "    return (a > NHI and 1 or 0) - (b > NHI and 1 or 0)\n"
    "  end\n"
    "  local new = redis.call('HGET', V, k)\n"
    "  decr(k, v)\n"
    "  local old = redis.call('HGET', V, k)\n"
    "  redis.call('HINCRBY', V, k, v)\n"
    "  return red(new) - red(old)\n"
    "end\n"
    "local nfast, hist = tonumber(ARGV[9]), ARGV[10]\n"
    "local i = 11\n"
    "if nfast > 0 and (mode == 'l' or not leased) then\n"
    "  lost = nfast\n"
    "  hist = ''\n"
    "  i = i + 2 * nfast\n"
    "else\n"
    "  count = tonumber(ARGV[8])\n"
    "  local rpcall, n = redis.pcall, 0\n"
    "  for j = 1, nfast do\n"
    "    local k, v = ARGV[i], ARGV[i + 1]\n"
    "    i = i + 2\n"
    "    local d = rpcall('HINCRBY', V, k, v)\n"
    "    if type(d) ~= 'number' then refused = refused + 1\n"
    "    else\n"
    "      local a, b = d < 0 and -d or d, d - tonumber(v)\n"
    "      if b < 0 then b = -b end\n"
    "      if (a >= NLO and a <= NHI) or (b >= NLO and b <= NHI) then\n"
    "        rd = rd + red_change(k, v, d)\n"
    "      elseif a > NHI then\n"
    "        if b < NLO then rd = rd + 1 end\n"
    "      elseif b > NHI then rd = rd - 1 end\n"
    "      n = n + 2\n"
    "      lines[n - 1] = k\n"
    "      lines[n] = v\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local B\n"
    "local function inside(k, d)\n"
    "  if count_live() == 0 or math.abs(d) < 4611686018427387904 then return true end\n"
    "  if not B then B = string.format('%.0f', (4096 - count_live()) * 2251799813685248) end\n"
    "  local s = redis.call('HGET', V, k)\n"
    "  return cmp(s, B) < 0 and cmp(s, '-' .. B) >= 0\n"
    "end\n"
    "local out, Z, recorded, evicted, kept = {}, P .. 'idem_order', 0, 0, -1\n"
    "while i <= #ARGV do\n"
    "  local n, ik, fp = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]\n"
    "  local first = i + 3\n"
    "  i = first + 2 * n\n"
    "  local o\n"
    "  local rec = ik ~= '' and redis.call('GET', P .. 'idem:' .. ik)\n"
    "  if rec then\n"
    "    local sp = rec:find(' ')\n"
    "    if rec:sub(1, sp - 1) ~= fp then o = 'C'\n"
    "    elseif rec:sub(sp + 1) == '200' then o = 'R' else o = 'V' end\n"
    "  else\n"
    "    o = '1'\n"
    "    local done = {}\n"
    "    for j = first, i - 2, 2 do\n"
    "      local d = incr(ARGV[j], ARGV[j + 1])\n"
    "      if not d then o = '2' break end\n"
    "      done[#done + 1] = {j, d}\n"
    "      if not inside(ARGV[j], d) then o = '2' break end\n"
    "    end\n"
    "    for x = #done, 1, -1 do\n"
    "      local k, v = ARGV[done[x][1]], ARGV[done[x][1] + 1]\n"
    "      if o == '1' then rd = rd + red_change(k, v, done[x][2]) else decr(k, v) end\n"
    "    end\n"
    "    if o == '1' then\n"
    "      for j = first, i - 2, 2 do\n"
    "        lines[#lines + 1] = ARGV[j]\n"
    "        lines[#lines + 1] = ARGV[j + 1]\n"
    "      end\n"
    "      count = count + n\n"
    "    end\n"
    "    if ik ~= '' then\n"
    "      redis.call('SET', P .. 'idem:' .. ik, fp .. (o == '1' and ' 200' or ' 422'), 'PX', "
    "window)\n"
    "      redis.call('ZADD', Z, now, ik)\n"
    "      recorded = recorded + 1\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = o\n"
    "end\n"
    "if recorded > 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', Z, '-inf', '(' .. tostring(now - tonumber(window)))\n"
    "  kept = redis.call('ZCARD', Z)\n"
    "  local over = math.min(kept - bound, recorded + 1000)\n"
    "  if over > 0 then\n"
    "    local old = redis.call('ZPOPMIN', Z, over)\n"
    "    for x = 1, #old, 2 do\n"
    "      evicted = evicted + redis.call('DEL', P .. 'idem:' .. old[x])\n"
    "    end\n"
    "    kept = kept - over\n"
    "  end\n"
    "end\n"
    "if rd ~= 0 then rc = tostring(redis.call('INCRBY', P .. 'red', rd)) end\n"
    "local id = ''\n"
    "if #lines > 0 then\n"
    "  if a0 == '0' then a0 = tostring(now) end\n"
    "  id = redis.call('XADD', P .. 'stream', '*', 'n', node, 's', seqs, 'a', a0,\n"
    "                  'c', tostring(count), 'h', hist, 't', tostring(now),\n"
    "                  'b', table.concat(lines, '\\n'))\n"
    "end\n"
    "local outs = table.concat(out)\n"
    "redis.call('HSET', NODE, 'seq', seqs, 'out', outs, 'id', id, 'lost', tostring(lost),\n"
    "           'ev', tostring(evicted))\n"
    "redis.call('PEXPIRE', NODE, 604800000)\n"
    "return {0, outs, id, tonumber(rc), granted, lost, refused, lag, fresh, evicted, kept}\n";

typedef struct queue {
    char host[256];
    int port;
    redisContext *c;
    char sha[41];
    char node[48]; /* this node's id: INCR and a random nonce */
    uint64_t seq;  /* the last batch sent */
    /* The batch in flight: its argument bytes and their offsets. */
    char *bytes;
    size_t len, cap;
    size_t *offs, *lens;
    const char **argv;
    size_t argc, cap_args;
    int held;             /* a batch is built and not answered yet */
    int lapsed;           /* the next batch holds acknowledgements of a lapsed lease */
    int held_lapsed;      /* the held batch is such a one (mode l) */
    int had_lease;        /* a lease was granted once (fast acknowledgements possible) */
    uint64_t held_fast;   /* acknowledged increments in it */
    int64_t last_call_ms; /* time_now_ms of the last call that got a reply */
    int64_t heartbeat_ms; /* a call at least this often */
    int64_t last_log_ms;
    /* For /stats (atomics). */
    uint64_t batches, entries, retries, errors, replays, lost, fast_refused;
    uint64_t lag_n, lag_max, lag_p50, lag_p99; /* the writer's, from Redis */
    char errstr[128];                          /* the last error (written by this thread) */
} queue_t;

/* ---- the batch's arguments ---- */

static int push(queue_t *q, const char *p, size_t n)
{
    if (q->argc == q->cap_args) {
        size_t c = q->cap_args ? q->cap_args * 2 : 256;
        size_t *o = realloc(q->offs, c * sizeof *o),
               *l = o ? realloc(q->lens, c * sizeof *l) : NULL;
        if (o)
            q->offs = o;
        if (!o || !l)
            return -ENOMEM;
        q->lens = l;
        q->cap_args = c;
    }
    if (q->len + n + 1 > q->cap) {
        size_t c = q->cap ? q->cap * 2 : 4096;
        while (c < q->len + n + 1)
            c *= 2;
        char *b = realloc(q->bytes, c);
        if (!b)
            return -ENOMEM;
        q->bytes = b;
        q->cap = c;
    }
    if (n)
        memcpy(q->bytes + q->len, p, n); /* p may be NULL when n is 0 */
    q->bytes[q->len + n] = 0;
    q->offs[q->argc] = q->len;
    q->lens[q->argc++] = n;
    q->len += n + 1;
    return 0;
}

static int push_i64(queue_t *q, int64_t v)
{
    char b[24];
    return push(q, b, (size_t)snprintf(b, sizeof b, "%" PRId64, v));
}

static int push_u64(queue_t *q, uint64_t v)
{
    char b[24];
    return push(q, b, (size_t)snprintf(b, sizeof b, "%" PRIu64, v));
}

/* The times of the fast acknowledgements of svc->pending, for the writer's
 * lag: "ms:count ..." with ms after `oldest` (each window counts them per
 * millisecond, service.c). 0 or -ENOMEM. */
static int push_acks(svc_t *svc, queue_t *q, int64_t oldest)
{
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    if (!f)
        return -ENOMEM;
    const char *sep = "";
    for (svc_window_t *w = svc->pending; w; w = w->next)
        for (size_t i = 0; w->oldest_ack_ms && i < w->nacks; i++)
            if (w->acks[i]) {
                fprintf(f, "%s%" PRId64 ":%" PRIu32, sep, w->start_ms + (int64_t)i - oldest,
                        w->acks[i]);
                sep = " ";
            }
    int rc = fclose(f) == 0 ? push(q, s, len) : -ENOMEM;
    free(s);
    return rc;
}

/* Build the next batch from svc->pending. 0 or -ENOMEM. */
static int build(svc_t *svc, queue_t *q)
{
    int rc = 0;
    uint64_t fast = 0;
    int64_t oldest = 0;
    q->argc = q->len = 0;
    agg_clear(&svc->w);
    for (svc_window_t *w = svc->pending; w; w = w->next) {
        if (svc_merge(svc, w) < 0) /* |sum| <= 2^50 per key (see the top) */
            return -ENOMEM;
        fast += w->fast_items;
        if (w->oldest_ack_ms && (!oldest || w->oldest_ack_ms < oldest))
            oldest = w->oldest_ack_ms;
    }
    /* The acknowledgement time, for the lag: wall clock, shared with the writer. */
    int64_t a0 = oldest ? svc_wall_ms() - (time_update() - oldest) : 0;
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = push(q, "", 0); /* EVALSHA sha 0: rds_script fills them */
    if (rc == 0)
        rc = push(q, q->node, strlen(q->node));
    if (rc == 0)
        rc = push_u64(q, q->seq + 1);
    if (rc == 0)
        rc = push(q, svc->cfg.durable ? "d" : q->lapsed ? "l" : "b", 1);
    if (rc == 0)
        rc = push_i64(q, a0);
    if (rc == 0)
        rc = push_i64(q, svc->cfg.idem_window_ms);
    if (rc == 0)
        rc = push_i64(q, svc->cfg.idem_keys);
    if (rc == 0)
        rc = push_i64(q, svc->cfg.lease_ms);
    if (rc == 0)
        rc = push_u64(q, fast);
    if (rc == 0)
        rc = push_u64(q, svc->w.len);
    if (rc == 0)
        rc = push_acks(svc, q, oldest);
    agg_entry_t *e;
    for (size_t i = 0; rc == 0 && (e = agg_next(&svc->w, &i));) {
        if ((rc = push(q, agg_key(&svc->w, e), e->key_len)) == 0)
            rc = push_i64(q, e->sum);
    }
    for (svc_window_t *w = svc->pending; w && rc == 0; w = w->next)
        for (size_t i = 0; i < w->ndefs && rc == 0; i++) {
            svc_deferred_t *d = &w->defs[i];
            rc = push_u64(q, d->nitems);
            if (rc == 0)
                rc = push(q, w->keys + d->idem_off, d->idem_len);
            if (rc == 0)
                rc = push_u64(q, d->fp);
            for (uint32_t j = 0; j < d->nitems && rc == 0; j++) {
                const svc_item_t *it = &w->items[d->item_off + j];
                if ((rc = push(q, w->keys + it->key_off, it->key_len)) == 0)
                    rc = push_i64(q, it->v);
            }
        }
    if (rc < 0)
        return rc;
    if (q->argc > q->cap_args)
        return -ENOMEM; /* not reached: push grew them */
    const char **argv = realloc(q->argv, q->cap_args * sizeof *argv);
    if (!argv)
        return -ENOMEM;
    q->argv = argv;
    for (size_t i = 0; i < q->argc; i++)
        q->argv[i] = q->bytes + q->offs[i];
    q->held = 1;
    q->held_lapsed = q->lapsed;
    q->lapsed = 0;
    q->held_fast = fast;
    q->seq++;
    return 0;
}

/* ---- Redis ---- */

static void log_error(queue_t *q, const char *what)
{
    snprintf(q->errstr, sizeof q->errstr, "%s", what);
    __atomic_add_fetch(&q->errors, 1, __ATOMIC_RELAXED);
    int64_t now = time_update();
    if (now - q->last_log_ms >= LOG_EVERY_MS) {
        q->last_log_ms = now;
        fprintf(stderr, "incrementor: redis://%s:%d: %s (batch %" PRIu64 " kept, retried)\n",
                q->host, q->port, what, q->seq);
    }
}

/* Durable needs Redis to fsync its AOF before replying: checked on every
 * connection (Redis may have been restarted, or reconfigured, meanwhile).
 * 0, or -EINVAL with the reason in err. */
static int check_durable(queue_t *q, char *err, size_t len)
{
    const char *want[][2] = {{"appendonly", "yes"}, {"appendfsync", "always"}};
    for (int i = 0; i < 2; i++) {
        redisReply *r = redisCommand(q->c, "CONFIG GET %s", want[i][0]);
        int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                 r->element[1]->type == REDIS_REPLY_STRING &&
                 strcmp(r->element[1]->str, want[i][1]) == 0;
        if (!ok)
            snprintf(err, len, "--ack durable needs Redis with %s %s (CONFIG GET %s: %s)",
                     want[i][0], want[i][1], want[i][0],
                     !r ? q->c->errstr
                     : r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                             r->element[1]->type == REDIS_REPLY_STRING
                         ? r->element[1]->str
                         : "no answer");
        freeReplyObject(r);
        if (!ok)
            return -EINVAL;
    }
    return 0;
}

/* Connect, and for a durable node check Redis's fsync: until it passes the
 * batch is held, unanswered. 0 or a negative errno. */
static int reconnect(svc_t *svc, queue_t *q)
{
    char err[300];
    if (q->c)
        return 0;
    if (!(q->c = rds_connect(q->host, q->port, err, sizeof err))) {
        log_error(q, err);
        return -ECONNREFUSED;
    }
    if (svc->cfg.durable && check_durable(q, err, sizeof err) < 0) {
        log_error(q, err);
        redisFree(q->c); /* connected again, and checked again, next time */
        q->c = NULL;
        return -EINVAL;
    }
    return 0;
}

static void drop_connection(queue_t *q)
{
    log_error(q, q->c->errstr[0] ? q->c->errstr : "connection lost");
    redisFree(q->c);
    q->c = NULL;
}

static uint64_t num(const redisReply *r)
{
    return r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? (uint64_t)r->integer : 0;
}

/* The writer's lag figures, "count max p50 p99" (consume.c). */
static void take_lag(queue_t *q, const redisReply *r)
{
    unsigned long long n, max, p50, p99;
    if (r->type != REDIS_REPLY_STRING ||
        sscanf(r->str, "%llu %llu %llu %llu", &n, &max, &p50, &p99) != 4)
        return;
    __atomic_store_n(&q->lag_n, n, __ATOMIC_RELAXED);
    __atomic_store_n(&q->lag_max, max, __ATOMIC_RELAXED);
    __atomic_store_n(&q->lag_p50, p50, __ATOMIC_RELAXED);
    __atomic_store_n(&q->lag_p99, p99, __ATOMIC_RELAXED);
}

/* The reply arrived: answer the deferred requests, count, and open or close
 * the fast path. 0, or -EPROTO for a reply that does not fit the batch
 * (kept and sent again). */
static int answered(svc_t *svc, queue_t *q, const redisReply *r, int64_t sent_ms)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 11 ||
        r->element[1]->type != REDIS_REPLY_STRING || r->element[2]->type != REDIS_REPLY_STRING)
        return -EPROTO;
    const redisReply *outs = r->element[1];
    size_t ndefs = 0;
    for (svc_window_t *w = svc->pending; w; w = w->next)
        ndefs += w->ndefs;
    if (outs->len != ndefs)
        return -EPROTO;
    uint64_t ok = 0, items = 0, overflow = 0, replayed = 0, conflicts = 0;
    size_t k = 0;
    for (svc_window_t *w = svc->pending; w; w = w->next)
        for (size_t i = 0; i < w->ndefs; i++, k++) {
            svc_deferred_t *d = &w->defs[i];
            char o = outs->str[k];
            d->replay = o == 'R' || o == 'V' || o == 'C';
            d->outcome = o == '1' || o == 'R' ? SVC_OK : o == 'C' ? SVC_CONFLICT : SVC_OVERFLOW;
            if (o == '1') {
                ok++;
                items += d->nitems;
            }
            overflow += o == '2';
            replayed += d->replay && o != 'C';
            conflicts += o == 'C';
        }
    uint64_t lost = num(r->element[5]), refused = num(r->element[6]);
    if (lost || refused)
        fprintf(stderr, "incrementor: batch %" PRIu64 ": %" PRIu64 " acknowledged increments %s\n",
                q->seq, q->held_fast,
                refused          ? "refused by Redis (overflow: a bug, see queue.c)"
                : q->held_lapsed ? "dropped: acknowledged under a lease that lapsed"
                                 : "dropped: the node's lease had expired (cut off from Redis too "
                                   "long)");
    __atomic_add_fetch(&q->lost, lost ? q->held_fast : 0, __ATOMIC_RELAXED);
    __atomic_add_fetch(&q->fast_refused, refused, __ATOMIC_RELAXED);
    __atomic_add_fetch(&q->batches, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&q->entries, r->element[2]->len > 0, __ATOMIC_RELAXED);
    __atomic_add_fetch(&q->replays, num(r->element[0]), __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->applied, (lost ? 0 : q->held_fast) + items, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->applied_reqs, ok, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->deferred_ok, ok + replayed, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->rejected_overflow, overflow, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->idem_replayed, replayed, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->idem_conflicts, conflicts, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->idem_evicted, num(r->element[9]), __ATOMIC_RELAXED);
    if (r->element[10]->type == REDIS_REPLY_INTEGER && r->element[10]->integer >= 0)
        __atomic_store_n(&svc->idem_keys, (uint64_t)r->element[10]->integer, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->flushes, 1, __ATOMIC_RELAXED);
    take_lag(q, r->element[7]);
    /* Fenced, or the lease had lapsed: what the open windows acknowledged
     * under it goes next, dropped (mode l), before the fast path opens
     * (closed here, before the windows are taken: see flush.c). A batch of
     * mode l dropped its own by design. */
    int fresh = num(r->element[8]) == 1 || (lost && !q->held_lapsed);
    if (fresh && q->had_lease && !svc->cfg.durable)
        q->lapsed = 1;
    q->had_lease |= num(r->element[4]) == 1;
    /* The fast path: buffered, nothing red, a lease granted by this call. */
    int open = !svc->cfg.durable && !q->lapsed && num(r->element[4]) == 1 &&
               r->element[3]->type == REDIS_REPLY_INTEGER && r->element[3]->integer == 0;
    __atomic_store_n(&svc->fast_until, sent_ms + svc->cfg.lease_ms / 2, __ATOMIC_RELAXED);
    __atomic_store_n(&svc->fast_open, open, __ATOMIC_RELAXED);
    q->last_call_ms = sent_ms;
    svc_answer_pending(svc);
    svc_recycle_pending(svc);
    q->held = 0;
    return 0;
}

/* Send the held batch once. 0 when answered, or a negative errno (kept). */
static int send_batch(svc_t *svc, queue_t *q)
{
    if (reconnect(svc, q) < 0)
        return -ECONNREFUSED;
    int64_t sent = time_update();
    redisReply *r = rds_script(q->c, script, q->sha, (int)q->argc, q->argv, q->lens);
    if (!r) {
        drop_connection(q);
        return -EIO;
    }
    int rc = -EPROTO;
    if (r->type == REDIS_REPLY_ERROR)
        log_error(q, r->str);
    else if ((rc = answered(svc, q, r, sent)) < 0)
        log_error(q, "a reply that does not fit the batch");
    freeReplyObject(r);
    return rc;
}

/* ---- the thread ---- */

/* Take the windows and build a batch when there is something to send, or
 * when a buffered node's lease needs renewing. */
static int next_batch(svc_t *svc, queue_t *q)
{
    __atomic_store_n(&svc->kick, 0, __ATOMIC_RELEASE);
    svc_take_windows(svc);
    /* Also a call now and then with nothing: a buffered node's lease, and
     * the writer's lag for /stats. */
    int renew = q->lapsed || time_update() - q->last_call_ms >= q->heartbeat_ms;
    if (!svc->pending && !renew)
        return 0;
    int rc = build(svc, q);
    if (rc < 0) {
        /* Out of memory: the windows stay pending, tried again next time. */
        log_error(q, "out of memory building a batch");
        q->argc = 0;
    }
    return rc;
}

void *queue_main(void *arg)
{
    svc_t *svc = arg;
    queue_t *q = svc->queue;
    int64_t next = time_update() + svc->cfg.flush_ms;
    for (;;) {
        if (!q->held)
            svc_wait_work(svc, next); /* the stop is read below, as the other threads set it */
        int stop = __atomic_load_n(&svc->stop, __ATOMIC_ACQUIRE);
        if (!q->held) {
            next = svc_next_window(next, time_update(), svc->cfg.flush_ms);
            next_batch(svc, q);
        }
        if (q->held && send_batch(svc, q) < 0) {
            __atomic_add_fetch(&q->retries, 1, __ATOMIC_RELAXED);
            if (!stop)
                usleep(RETRY_MS * 1000);
        }
        if (!stop)
            continue;
        /* The loops are gone: what is left must reach Redis. */
        int64_t until = time_update() + FINAL_MS;
        for (;;) {
            if (!q->held && (next_batch(svc, q), !q->held))
                return NULL;
            if (time_update() >= until)
                break;
            if (send_batch(svc, q) < 0)
                usleep(RETRY_MS * 1000);
        }
        fprintf(stderr,
                "incrementor: giving up: batch %" PRIu64 " (%" PRIu64
                " acknowledged increments) not handed to Redis\n",
                q->seq, q->held_fast);
        svc->exit_status = 1;
        return NULL;
    }
}

/* ---- set-up ---- */

int queue_init(svc_t *svc)
{
    char err[300];
    queue_t *q = calloc(1, sizeof *q);
    if (!q) {
        fprintf(stderr, "incrementor: out of memory\n");
        return -ENOMEM;
    }
    svc->queue = q;
    rds_parse_url(svc->cfg.queue_url, q->host, sizeof q->host, &q->port); /* checked by main */
    if (!(q->c = rds_connect(q->host, q->port, err, sizeof err))) {
        fprintf(stderr, "incrementor: %s\n", err);
        return -ECONNREFUSED;
    }
    if (svc->cfg.durable && check_durable(q, err, sizeof err) < 0) {
        fprintf(stderr, "incrementor: %s\n", err);
        return -EINVAL;
    }
    redisReply *r = redisCommand(q->c, "INCR %s", RDS_PREFIX "next_node");
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "incrementor: redis://%s:%d: INCR: %s\n", q->host, q->port,
                !r                             ? q->c->errstr
                : r->type == REDIS_REPLY_ERROR ? r->str
                                               : "no integer");
        freeReplyObject(r);
        return -EIO;
    }
    /* The counter alone could hand out an id in use if Redis lost it (a
     * restart without its AOF): the nonce keeps the id this node's. */
    uint64_t nonce;
    if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce) {
        fprintf(stderr, "incrementor: getrandom: %s\n", strerror(errno));
        freeReplyObject(r);
        return -EIO;
    }
    snprintf(q->node, sizeof q->node, "%lld-%016" PRIx64, r->integer, nonce);
    freeReplyObject(r);
    /* The fast path opens with the first reply (buffered: a lease, nothing red). */
    svc->fast_open = 0;
    q->heartbeat_ms = svc->cfg.lease_ms / HEARTBEATS < HEARTBEAT_MS ? svc->cfg.lease_ms / HEARTBEATS
                                                                    : HEARTBEAT_MS;
    q->last_call_ms = INT64_MIN / 2;
    return 0;
}

void queue_stats(svc_t *svc, char *buf, size_t len)
{
    queue_t *q = svc->queue;
    snprintf(buf, len,
             "\"queue\":{\"redis\":\"%s:%d\",\"node\":\"%s\",\"batches\":%" PRIu64
             ",\"entries\":%" PRIu64 ",\"retries\":%" PRIu64 ",\"errors\":%" PRIu64
             ",\"replayed_batches\":%" PRIu64 ",\"lost_lease_expired\":%" PRIu64
             ",\"fast_refused\":%" PRIu64 ",\"lease_ms\":%d}",
             q->host, q->port, q->node, __atomic_load_n(&q->batches, __ATOMIC_RELAXED),
             __atomic_load_n(&q->entries, __ATOMIC_RELAXED),
             __atomic_load_n(&q->retries, __ATOMIC_RELAXED),
             __atomic_load_n(&q->errors, __ATOMIC_RELAXED),
             __atomic_load_n(&q->replays, __ATOMIC_RELAXED),
             __atomic_load_n(&q->lost, __ATOMIC_RELAXED),
             __atomic_load_n(&q->fast_refused, __ATOMIC_RELAXED), svc->cfg.lease_ms);
}

void svc_lag(svc_t *svc, uint64_t *n, uint64_t *max, uint64_t *p50, uint64_t *p99)
{
    queue_t *q = svc->queue;
    if (!q) {
        *n = __atomic_load_n(&svc->lag.n, __ATOMIC_RELAXED);
        *max = __atomic_load_n(&svc->lag.max, __ATOMIC_RELAXED);
        *p50 = lag_quantile(&svc->lag, 0.5);
        *p99 = lag_quantile(&svc->lag, 0.99);
        return;
    }
    *n = __atomic_load_n(&q->lag_n, __ATOMIC_RELAXED);
    *max = __atomic_load_n(&q->lag_max, __ATOMIC_RELAXED);
    *p50 = __atomic_load_n(&q->lag_p50, __ATOMIC_RELAXED);
    *p99 = __atomic_load_n(&q->lag_p99, __ATOMIC_RELAXED);
}

void queue_free(svc_t *svc)
{
    queue_t *q = svc->queue;
    if (!q)
        return;
    if (q->c)
        redisFree(q->c);
    free(q->bytes);
    free(q->offs);
    free(q->lens);
    free(q->argv);
    free(q);
    svc->queue = NULL;
}
