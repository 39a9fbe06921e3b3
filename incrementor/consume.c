/* The writer (--consume redis://HOST:PORT --db FILE): reads the stream the
 * web nodes fill (queue.c) with the consumer group `writers`, applies each
 * batch of entries to SQLite in one transaction, and acknowledges (XACK)
 * them to Redis only after that transaction has committed.
 *
 * Exactly once from the stream to the database. Each transaction applies
 * its entries and records their ids in incrementor_stream_applied (db.c),
 * and an entry whose id is recorded there is skipped: applying and
 * recording commit together or not at all. Redis keeps an entry in the
 * group's pending list (PEL) from its delivery to its XACK, so:
 *   - a crash before the commit loses the transaction: the entries are
 *     still pending, and the restarted writer reads its own pending entries
 *     first (XREADGROUP ... 0) and applies them;
 *   - a crash between the commit and the XACK leaves them pending too: they
 *     are read again and skipped, since their ids are recorded;
 *   - a writer that stays away has its entries taken over by another (the
 *     same database, another --consumer name): XAUTOCLAIM gives it the
 *     entries idle for --claim-ms, and the same record decides.
 * A set of ids rather than one "last id applied" because with takeovers
 * entries are not applied in stream order. The set is pruned below the
 * smallest id that can still be delivered: the smallest pending id of the
 * group, or, with nothing pending, its last delivered id (an entry below
 * both was acknowledged, and an acknowledged entry is never delivered
 * again). The stream is trimmed (XTRIM MINID) at the same point.
 *
 * Two writers holding one entry. A writer only slow (stopped between its
 * read and its transaction) may find its entry claimed, applied,
 * acknowledged and its record pruned by another: the record alone cannot
 * decide then. So each transaction, once it holds the database's write
 * lock (BEGIN IMMEDIATE), asks Redis which of its entries are still in
 * this writer's pending list (XPENDING ... consumer) and applies and
 * acknowledges only those. An entry pending on this writer now was never
 * acknowledged, so its record, if any, was not pruned (pruning stays below
 * every pending id); and another writer that claims it from now on cannot
 * commit before this transaction ends, and then finds it recorded. A
 * batch read more than claim_ms/2 ago is not applied: this writer reads
 * its own pending entries again, which keeps them from being claimed.
 *
 * Values. Redis decided every increment against the running values (the
 * hash `values`, see queue.c), which are the database's values with every
 * entry applied in stream order; so a writer applying in stream order never
 * leaves int64. Within a transaction the deltas of one key are summed, and
 * written out early when the sum itself would leave int64 (the values after
 * each prefix fit, the sum of a prefix may not). With takeovers, two
 * writers may apply entries out of order, which near a limit could make the
 * database's triggers refuse a transaction when the earlier entries are
 * pending on a writer gone. So a refused batch is left pending, and the
 * writer claims the idle entries (XAUTOCLAIM) before reading its own
 * pending entries again: the earlier ones come with the refused ones, in
 * stream order, into one transaction. Only a busy database is retried in
 * place.
 *
 * The lag: each entry carries the wall-clock time of its oldest
 * acknowledgement and its number of increments; at the commit each
 * increment counts commit time minus that (an upper bound for the newer
 * ones) in svc->lag, which this writer also publishes in Redis for the web
 * nodes' /stats. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/timer.h"
#include "redis.h"
#include "service.h"

#define COUNT        500  /* entries per read, hence at most per transaction */
#define BLOCK_MS     100  /* XREADGROUP waits this long for new entries */
#define RETRY_MS     200  /* after a failed commit or a lost connection */
#define TRIM_MS      1000 /* trim the stream and prune the ids this often */
#define PUBLISH_MS   100  /* publish the lag this often */
#define LOG_EVERY_MS 1000

typedef struct consume {
    char host[256];
    int port;
    redisContext *c;
    int own_pending; /* reading this writer's pending entries (after a start or an error) */
    int claim_first; /* ... after claiming the idle ones (a batch failed: see apply) */
    char from[48];   /* ... after this id */
    int64_t next_claim, next_trim, next_publish, last_log;
    uint64_t prune_ms, prune_seq; /* ids below this are pruned in the next transaction */
    agg_t sums;
    /* For /stats (atomics). */
    uint64_t batches, entries, skipped, claimed, released, bad, errors, trimmed;
    uint64_t last_ms, last_seq; /* the id of the last entry committed */
    /* Test hook (INCREMENTOR_TEST_STALL="N:MS"): sleep MS ms between
     * reading the N-th non-empty batch and applying it. */
    long stall_batch, stall_ms, batches_read;
} consume_t;

static void log_error(consume_t *cs, const char *what)
{
    __atomic_add_fetch(&cs->errors, 1, __ATOMIC_RELAXED);
    int64_t now = time_update();
    if (now - cs->last_log >= LOG_EVERY_MS) {
        cs->last_log = now;
        fprintf(stderr, "incrementor: writer: %s\n", what);
    }
}

static void drop_connection(consume_t *cs)
{
    if (!cs->c)
        return;
    log_error(cs, cs->c->errstr[0] ? cs->c->errstr : "connection lost");
    redisFree(cs->c);
    cs->c = NULL;
}

/* Connect and make sure the group exists. 0 or a negative errno. */
static int connect_group(consume_t *cs)
{
    char err[300];
    if (cs->c)
        return 0;
    if (!(cs->c = rds_connect(cs->host, cs->port, err, sizeof err))) {
        log_error(cs, err);
        return -ECONNREFUSED;
    }
    redisReply *r = redisCommand(cs->c, "XGROUP CREATE %s %s 0 MKSTREAM", RDS_STREAM, RDS_GROUP);
    int ok = r && (r->type != REDIS_REPLY_ERROR || strncmp(r->str, "BUSYGROUP", 9) == 0);
    if (!ok) {
        log_error(cs, r ? r->str : cs->c->errstr);
        freeReplyObject(r);
        drop_connection(cs);
        return -EIO;
    }
    freeReplyObject(r);
    /* After any reconnection, this writer's own pending entries first. */
    cs->own_pending = 1;
    snprintf(cs->from, sizeof cs->from, "0");
    return 0;
}

/* ---- one entry ---- */

typedef struct entry {
    uint64_t ms, seq;
    int64_t ack_ms, t_ms; /* the oldest fast acknowledgement, the script's call */
    uint64_t count;
    const char *hist; /* "ms:count ..." of the fast acknowledgements after ack_ms */
    const char *body;
    size_t body_len;
} entry_t;

/* Read an entry ([id, [field, value, ...]]). Returns 1 with the entry, 0 for
 * a deleted one (no fields: trimmed), or -EPROTO. */
static int parse_entry(const redisReply *r, entry_t *e)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        rds_parse_id(r->element[0]->str, r->element[0]->len, &e->ms, &e->seq) < 0)
        return -EPROTO;
    const redisReply *f = r->element[1];
    if (f->type == REDIS_REPLY_NIL)
        return 0;
    if (f->type != REDIS_REPLY_ARRAY || f->elements % 2)
        return -EPROTO;
    int have = 0;
    for (size_t i = 0; i < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || k->len != 1)
            return -EPROTO;
        if (k->str[0] == 'a') {
            e->ack_ms = strtoll(v->str, NULL, 10);
            have |= 1;
        } else if (k->str[0] == 'c') {
            e->count = strtoull(v->str, NULL, 10);
            have |= 2;
        } else if (k->str[0] == 't') {
            e->t_ms = strtoll(v->str, NULL, 10);
        } else if (k->str[0] == 'h') {
            e->hist = v->str;
        } else if (k->str[0] == 'b') {
            e->body = v->str;
            e->body_len = v->len;
            have |= 4;
        }
    }
    return have == 7 ? 1 : -EPROTO;
}

/* Add a delta to the transaction's sum of key, writing the sum out first
 * when it would leave int64. 0 or a negative errno. */
static int add(svc_t *svc, consume_t *cs, const char *key, size_t len, int64_t v)
{
    agg_entry_t *e = agg_get(&cs->sums, key, len);
    if (!e)
        return -ENOMEM;
    int64_t s;
    if (__builtin_add_overflow(e->sum, v, &s)) {
        int rc = db_add(svc->db, key, len, e->sum);
        if (rc < 0)
            return rc;
        s = v;
    }
    e->sum = s;
    e->count = 1;
    return 0;
}

/* Apply the body's "key\ndelta\n..." lines. 0, -EPROTO or a negative errno. */
static int apply_body(svc_t *svc, consume_t *cs, const entry_t *e)
{
    const char *p = e->body, *end = e->body + e->body_len;
    while (p < end) {
        const char *k = p, *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl || nl == k)
            return -EPROTO;
        const char *v = nl + 1, *vend = memchr(v, '\n', (size_t)(end - v));
        if (!vend)
            vend = end;
        char num[24], *stop;
        if (vend == v || (size_t)(vend - v) >= sizeof num)
            return -EPROTO;
        memcpy(num, v, (size_t)(vend - v));
        num[vend - v] = 0;
        errno = 0;
        long long d = strtoll(num, &stop, 10);
        if (*stop || errno)
            return -EPROTO;
        int rc = add(svc, cs, k, (size_t)(nl - k), d);
        if (rc < 0)
            return rc;
        p = vend + 1;
    }
    return 0;
}

/* ---- one batch ---- */

/* Which of entries[0..n) (ids ascending) are in this writer's pending
 * list now: mine[i] = 1. 0, or -ENOTCONN when Redis failed. */
static int still_mine(consume_t *cs, const char *name, redisReply **entries, size_t n, char *mine)
{
    const redisReply *first = entries[0]->element[0], *last = entries[n - 1]->element[0];
    char start[48];
    size_t i = 0;
    memset(mine, 0, n);
    snprintf(start, sizeof start, "%.*s", (int)first->len, first->str);
    for (;;) {
        /* XPENDING stream group start end count consumer: [[id, consumer,
         * idle, deliveries]...] in id order. Pages of COUNT: this writer
         * may hold other ids between the batch's (an XAUTOCLAIM batch). */
        redisReply *r = redisCommand(cs->c, "XPENDING %s %s %s %b %d %s", RDS_STREAM, RDS_GROUP,
                                     start, last->str, last->len, COUNT, name);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            if (r)
                log_error(cs, r->type == REDIS_REPLY_ERROR ? r->str : "XPENDING: bad reply");
            freeReplyObject(r);
            return -ENOTCONN;
        }
        uint64_t pms = 0, pseq = 0;
        for (size_t j = 0; j < r->elements; j++) {
            const redisReply *p = r->element[j];
            if (p->type != REDIS_REPLY_ARRAY || p->elements < 1 ||
                p->element[0]->type != REDIS_REPLY_STRING ||
                rds_parse_id(p->element[0]->str, p->element[0]->len, &pms, &pseq) < 0) {
                freeReplyObject(r);
                log_error(cs, "XPENDING: bad entry");
                return -ENOTCONN;
            }
            for (; i < n; i++) { /* both in id order: merge */
                uint64_t ms, seq;
                const redisReply *id = entries[i]->element[0];
                if (rds_parse_id(id->str, id->len, &ms, &seq) < 0)
                    continue; /* not an id Redis holds: not ours */
                if (ms > pms || (ms == pms && seq > pseq))
                    break;
                mine[i] = ms == pms && seq == pseq;
            }
        }
        size_t got = r->elements;
        freeReplyObject(r);
        if (got < COUNT || i >= n)
            return 0;
        snprintf(start, sizeof start, "(%" PRIu64 "-%" PRIu64, pms, pseq);
    }
}

/* In one transaction: apply every entry of entries[0..n) (ids ascending)
 * still in this writer's pending list (mine[i], asked under the database's
 * write lock) and not applied yet, record their ids, prune old ids. Fills
 * applied[] (1 per entry applied). Returns 0 or a negative errno (rolled
 * back, its message in err): -ENOTCONN when Redis failed. */
static int transaction(svc_t *svc, consume_t *cs, redisReply **entries, size_t n, char *mine,
                       char *applied, uint64_t *skipped, uint64_t *bad, char *err, size_t errlen)
{
    int rc = db_begin(svc->db); /* BEGIN IMMEDIATE: the write lock */
    agg_clear(&cs->sums);
    *skipped = *bad = 0;
    memset(applied, 0, n);
    if (rc >= 0)
        rc = still_mine(cs, svc->cfg.consumer, entries, n, mine);
    for (size_t i = 0; i < n && rc >= 0; i++) {
        entry_t e = {0};
        if (!mine[i])
            continue; /* claimed by another writer: its transaction decides */
        int got = parse_entry(entries[i], &e);
        if (got <= 0) {
            *bad += got < 0;
            continue; /* deleted (nothing to apply) or not ours: logged below */
        }
        if ((rc = db_stream_seen(svc->db, e.ms, e.seq)) != 0) {
            *skipped += rc == 1;
            continue;
        }
        if ((rc = apply_body(svc, cs, &e)) == -EPROTO) {
            (*bad)++;
            rc = 0;
            continue;
        }
        if (rc == 0 && (rc = db_stream_mark(svc->db, e.ms, e.seq)) == 0)
            applied[i] = 1;
    }
    /* marks: add() sets count 1, not the increments. rows_written leaves
     * out add()'s rare early write of a sum that would leave int64. */
    uint64_t marks = 0, rows = 0;
    if (rc >= 0)
        rc = svc_write_sums(svc, &cs->sums, &marks, &rows);
    if (rc >= 0 && cs->prune_ms)
        rc = db_stream_prune(svc->db, cs->prune_ms, cs->prune_seq);
    if (rc >= 0 && (rc = db_commit(svc->db)) >= 0) {
        __atomic_add_fetch(&svc->rows_written, rows, __ATOMIC_RELAXED);
        svc_wal_check(svc);
    }
    if (rc < 0) {
        snprintf(err, errlen, "%s",
                 rc == -ENOMEM     ? "out of memory"
                 : rc == -ENOTCONN ? "Redis failed"
                                   : db_errmsg(svc->db)); /* before the rollback resets it */
        db_rollback(svc->db);
    }
    return rc < 0 ? rc : 0;
}

/* Count the entry's increments in the lag histogram: the fast ones at
 * their acknowledgement times, the others (decided by the script, answered
 * on its reply) at the script's call. */
static void record_lag(svc_t *svc, const entry_t *e, int64_t now)
{
    uint64_t fast = 0;
    const char *p = e->hist;
    long long off;
    unsigned long cnt;
    int used;
    while (p && sscanf(p, " %lld:%lu%n", &off, &cnt, &used) == 2) {
        lag_add(&svc->lag, now - (e->ack_ms + off), cnt);
        fast += cnt;
        p += used;
    }
    if (e->count > fast)
        lag_add(&svc->lag, now - (e->t_ms ? e->t_ms : e->ack_ms), e->count - fast);
}

/* Apply entries[0..n) (ids ascending, read at read_ms), then XACK those
 * still this writer's. Returns 0; 1 when the batch was left pending (read
 * too long ago, or its transaction failed other than by a busy database:
 * this writer's pending entries are read again, after claiming the idle
 * ones); or a negative errno when Redis failed (reconnect; the entries
 * stay pending). */
static int apply(svc_t *svc, consume_t *cs, redisReply **entries, size_t n, int64_t read_ms)
{
    char applied[COUNT], mine[COUNT], err[300];
    uint64_t skipped, bad;
    int rc;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (entries[i]->type != REDIS_REPLY_ARRAY || entries[i]->elements < 1 ||
            entries[i]->element[0]->type != REDIS_REPLY_STRING) {
            log_error(cs, "a stream reply without entry ids");
            return -EPROTO; /* reconnect and read again */
        }
    int stall = ++cs->batches_read == cs->stall_batch;
    int64_t t0 = time_now_us();
    for (;;) {
        if (time_update() - read_ms > svc->cfg.claim_ms / 2) {
            /* Others may claim its entries by now: read own pending again
             * (which also makes them fresh). Whatever is claimed meanwhile
             * the transaction leaves out (still_mine). */
            cs->own_pending = 1;
            snprintf(cs->from, sizeof cs->from, "0");
            return 1;
        }
        if (stall) { /* the test hook: the worst place, just before the lock */
            usleep((useconds_t)cs->stall_ms * 1000);
            stall = 0;
        }
        rc = transaction(svc, cs, entries, n, mine, applied, &skipped, &bad, err, sizeof err);
        if (rc == 0)
            break;
        if (rc == -ENOTCONN)
            return -EIO;
        char msg[400];
        snprintf(msg, sizeof msg, "commit failed (%s), retried", err);
        log_error(cs, msg);
        __atomic_add_fetch(&svc->failed_flushes, 1, __ATOMIC_RELAXED);
        if (__atomic_load_n(&svc->stop, __ATOMIC_ACQUIRE))
            return rc; /* pending in Redis: the next start applies them */
        usleep(RETRY_MS * 1000);
        if (rc != -EBUSY && rc != -ENOMEM) {
            /* Refused (near a limit, the entries of another writer that
             * precede these may be missing: see the top): leave them
             * pending, claim the idle ones and apply all in stream order. */
            cs->own_pending = cs->claim_first = 1;
            snprintf(cs->from, sizeof cs->from, "0");
            return 1;
        }
    }
    if (bad)
        fprintf(stderr, "incrementor: writer: %" PRIu64 " malformed entries skipped\n", bad);
    /* Counted once committed. */
    int64_t now = svc_wall_ms();
    uint64_t incs = 0, released = 0, ms, seq;
    for (size_t i = 0; i < n; i++) {
        entry_t e = {0};
        released += !mine[i];
        if (applied[i] && parse_entry(entries[i], &e) == 1) {
            record_lag(svc, &e, now);
            incs += e.count;
        }
    }
    const redisReply *last = entries[n - 1]->element[0];
    if (rds_parse_id(last->str, last->len, &ms, &seq) == 0) {
        __atomic_store_n(&cs->last_seq, seq, __ATOMIC_RELEASE);
        __atomic_store_n(&cs->last_ms, ms, __ATOMIC_RELEASE);
    }
    __atomic_add_fetch(&svc->applied, incs, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->flushes, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&svc->last_flush_us, (uint64_t)(time_now_us() - t0), __ATOMIC_RELAXED);
    __atomic_add_fetch(&cs->batches, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&cs->entries, n - skipped - released, __ATOMIC_RELAXED);
    __atomic_add_fetch(&cs->skipped, skipped, __ATOMIC_RELAXED);
    __atomic_add_fetch(&cs->released, released, __ATOMIC_RELAXED);
    __atomic_add_fetch(&cs->bad, bad, __ATOMIC_RELAXED);
    if (released == n)
        return 0;
    /* XACK stream group id... (this writer's only: the others' are
     * acknowledged by the writer that holds them, after its commit) */
    const char *argv[COUNT + 3];
    size_t lens[COUNT + 3], k = 3;
    argv[0] = "XACK";
    argv[1] = RDS_STREAM;
    argv[2] = RDS_GROUP;
    lens[0] = 4;
    lens[1] = strlen(RDS_STREAM);
    lens[2] = strlen(RDS_GROUP);
    for (size_t i = 0; i < n; i++)
        if (mine[i]) {
            argv[k] = entries[i]->element[0]->str;
            lens[k++] = entries[i]->element[0]->len;
        }
    redisReply *r = redisCommandArgv(cs->c, (int)k, argv, lens);
    rc = r && r->type == REDIS_REPLY_INTEGER ? 0 : -EIO;
    if (r && rc < 0)
        log_error(cs, r->type == REDIS_REPLY_ERROR ? r->str : "XACK: no integer");
    freeReplyObject(r);
    return rc;
}

/* The entries of an XREADGROUP reply ([[stream, [entry...]]]), or NULL. */
static redisReply *stream_entries(redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 1)
        return NULL;
    redisReply *s = r->element[0];
    if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
        s->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    return s->element[1];
}

/* Check XREADGROUP's reply r: 0 with *es its entries (NULL when none came),
 * or -EIO for an error or a reply of another shape, logged, with r freed. */
static int read_checked(consume_t *cs, redisReply *r, redisReply **es)
{
    *es = stream_entries(r);
    if (r && (r->type == REDIS_REPLY_NIL || *es))
        return 0;
    if (r)
        log_error(cs, r->type == REDIS_REPLY_ERROR ? r->str : "XREADGROUP: bad reply");
    freeReplyObject(r);
    return -EIO;
}

/* XAUTOCLAIM the entries idle on other writers for --claim-ms, all of them
 * (COUNT a call): applied (apply_them) or left in this writer's pending
 * list (read next). 0, 1 (apply left a batch pending) or a negative errno. */
static int claim(svc_t *svc, consume_t *cs, const char *name, int apply_them)
{
    /* XAUTOCLAIM: [next start, [entries or ids], [deleted ids]]. */
    char start[48] = "0-0";
    int rc = 0;
    do {
        int64_t now = time_update();
        redisReply *r =
            apply_them ? redisCommand(cs->c, "XAUTOCLAIM %s %s %s %d %s COUNT %d", RDS_STREAM,
                                      RDS_GROUP, name, svc->cfg.claim_ms, start, COUNT)
                       : redisCommand(cs->c, "XAUTOCLAIM %s %s %s %d %s COUNT %d JUSTID",
                                      RDS_STREAM, RDS_GROUP, name, svc->cfg.claim_ms, start, COUNT);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            if (r)
                log_error(cs, r->type == REDIS_REPLY_ERROR ? r->str : "XAUTOCLAIM: bad reply");
            freeReplyObject(r);
            return -EIO;
        }
        snprintf(start, sizeof start, "%s", r->element[0]->str);
        __atomic_add_fetch(&cs->claimed, r->element[1]->elements, __ATOMIC_RELAXED);
        if (apply_them)
            rc = apply(svc, cs, r->element[1]->element, r->element[1]->elements, now);
        freeReplyObject(r);
    } while (rc == 0 && strcmp(start, "0-0") != 0);
    return rc;
}

/* Read and apply: this writer's pending entries first, then those idle on
 * dead writers, then new ones. 0, or a negative errno (reconnect). */
static int step(svc_t *svc, consume_t *cs, const char *name)
{
    redisReply *r;
    int rc = 0;
    int64_t now = time_update();
    if (cs->own_pending) {
        if (cs->claim_first) {
            /* A batch was refused: the entries it may need are idle on a
             * writer gone; claimed now, they are read with this writer's
             * own, in stream order, and applied together. */
            if ((rc = claim(svc, cs, name, 0)) < 0)
                return rc;
            cs->claim_first = 0;
            cs->next_claim = now + svc->cfg.claim_ms / 2;
        }
        r = redisCommand(cs->c, "XREADGROUP GROUP %s %s COUNT %d STREAMS %s %s", RDS_GROUP, name,
                         COUNT, RDS_STREAM, cs->from);
        redisReply *es;
        if (read_checked(cs, r, &es) < 0)
            return -EIO;
        if (!es || es->elements == 0) {
            cs->own_pending = 0;
        } else if ((rc = apply(svc, cs, es->element, es->elements, now)) == 0) {
            const redisReply *id = es->element[es->elements - 1]->element[0];
            snprintf(cs->from, sizeof cs->from, "%.*s", (int)id->len, id->str);
        }
        freeReplyObject(r);
        return rc < 0 ? rc : 0;
    }
    if (now >= cs->next_claim) {
        rc = claim(svc, cs, name, 1);
        cs->next_claim = now + svc->cfg.claim_ms / 2;
        if (rc != 0)
            return rc < 0 ? rc : 0;
    }
    now = time_update();
    r = redisCommand(cs->c, "XREADGROUP GROUP %s %s COUNT %d BLOCK %d STREAMS %s >", RDS_GROUP,
                     name, COUNT, BLOCK_MS, RDS_STREAM);
    redisReply *es;
    if (read_checked(cs, r, &es) < 0)
        return -EIO;
    if (es)
        rc = apply(svc, cs, es->element, es->elements, now);
    freeReplyObject(r);
    return rc < 0 ? rc : 0;
}

/* Publish the lag for the web nodes: "count max p50 p99" (queue.c). */
static void publish(svc_t *svc, consume_t *cs)
{
    uint64_t n, max, p50, p99;
    char v[96];
    svc_lag(svc, &n, &max, &p50, &p99);
    snprintf(v, sizeof v, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64, n, max, p50, p99);
    redisReply *r = redisCommand(cs->c, "SET %s %s", RDS_LAG, v);
    freeReplyObject(r); /* a failure shows at the next read */
}

/* Trim the stream below the smallest id that can still be delivered, and
 * have the next transaction prune the recorded ids below it (see the top). */
static void trim(consume_t *cs)
{
    char minid[48] = "";
    redisReply *g = redisCommand(cs->c, "XINFO GROUPS %s", RDS_STREAM);
    for (size_t i = 0; g && g->type == REDIS_REPLY_ARRAY && i < g->elements; i++) {
        const redisReply *f = g->element[i];
        int ours = 0;
        const char *last = NULL;
        for (size_t j = 0; f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2) {
            const redisReply *k = f->element[j], *v = f->element[j + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(k->str, "name"))
                ours = !strcmp(v->str, RDS_GROUP);
            else if (!strcmp(k->str, "last-delivered-id"))
                last = v->str;
        }
        if (ours && last)
            snprintf(minid, sizeof minid, "%s", last);
    }
    freeReplyObject(g);
    if (!minid[0])
        return;
    /* Read after the group's last delivered id: whatever is delivered from
     * now on is above it, and the smallest pending id is below it. */
    redisReply *p = redisCommand(cs->c, "XPENDING %s %s", RDS_STREAM, RDS_GROUP);
    if (!p || p->type != REDIS_REPLY_ARRAY || p->elements < 2) {
        freeReplyObject(p);
        return;
    }
    if (p->element[0]->type == REDIS_REPLY_INTEGER && p->element[0]->integer > 0) {
        if (p->element[1]->type != REDIS_REPLY_STRING) {
            freeReplyObject(p);
            return;
        }
        snprintf(minid, sizeof minid, "%s", p->element[1]->str);
    }
    freeReplyObject(p);
    uint64_t ms, seq;
    if (rds_parse_id(minid, strlen(minid), &ms, &seq) < 0 || (ms == 0 && seq == 0))
        return;
    redisReply *t = redisCommand(cs->c, "XTRIM %s MINID %s", RDS_STREAM, minid);
    if (t && t->type == REDIS_REPLY_INTEGER)
        __atomic_add_fetch(&cs->trimmed, (uint64_t)t->integer, __ATOMIC_RELAXED);
    freeReplyObject(t);
    cs->prune_ms = ms;
    cs->prune_seq = seq;
}

void *consume_main(void *arg)
{
    svc_t *svc = arg;
    consume_t *cs = svc->consume;
    while (!__atomic_load_n(&svc->stop, __ATOMIC_ACQUIRE)) {
        if (connect_group(cs) < 0) {
            usleep(RETRY_MS * 1000);
            continue;
        }
        if (step(svc, cs, svc->cfg.consumer) < 0) {
            drop_connection(cs);
            continue;
        }
        int64_t now = time_update();
        if (now >= cs->next_publish) {
            publish(svc, cs);
            cs->next_publish = now + PUBLISH_MS;
        }
        if (now >= cs->next_trim) {
            trim(cs);
            cs->next_trim = now + TRIM_MS;
        }
    }
    return NULL;
}

int consume_init(svc_t *svc)
{
    consume_t *cs = calloc(1, sizeof *cs);
    if (!cs) {
        fprintf(stderr, "incrementor: out of memory\n");
        return -ENOMEM;
    }
    svc->consume = cs;
    agg_init(&cs->sums);
    rds_parse_url(svc->cfg.consume_url, cs->host, sizeof cs->host, &cs->port); /* main checked it */
    const char *stall = getenv("INCREMENTOR_TEST_STALL");
    if (stall && sscanf(stall, "%ld:%ld", &cs->stall_batch, &cs->stall_ms) != 2)
        cs->stall_batch = 0;
    int rc = db_stream_init(svc->db);
    if (rc < 0) {
        fprintf(stderr, "incrementor: %s: %s\n", svc->cfg.db_path, db_errmsg(svc->db));
        return rc;
    }
    char err[300];
    if (!(cs->c = rds_connect(cs->host, cs->port, err, sizeof err))) {
        fprintf(stderr, "incrementor: %s\n", err);
        return -ECONNREFUSED;
    }
    redisFree(cs->c); /* reachable: the thread connects (again after each error) */
    cs->c = NULL;
    return 0;
}

void consume_stats(svc_t *svc, char *buf, size_t len)
{
    consume_t *cs = svc->consume;
    char last[48] = "";
    /* Two atomics, seq stored before ms and ms read again after seq: a
     * batch committed in between is read again, not paired with the
     * previous one's ms (only ms going back and forth in between, with
     * out-of-order takeovers, could pair them: a glance, never used). */
    uint64_t ms, seq;
    do {
        ms = __atomic_load_n(&cs->last_ms, __ATOMIC_ACQUIRE);
        seq = __atomic_load_n(&cs->last_seq, __ATOMIC_ACQUIRE);
    } while (ms != __atomic_load_n(&cs->last_ms, __ATOMIC_ACQUIRE));
    if (ms || seq)
        snprintf(last, sizeof last, "%" PRIu64 "-%" PRIu64, ms, seq);
    snprintf(buf, len,
             "\"consume\":{\"redis\":\"%s:%d\",\"consumer\":\"%s\",\"batches\":%" PRIu64
             ",\"entries\":%" PRIu64 ",\"skipped\":%" PRIu64 ",\"claimed\":%" PRIu64
             ",\"released\":%" PRIu64 ",\"malformed\":%" PRIu64 ",\"errors\":%" PRIu64
             ",\"trimmed\":%" PRIu64 ",\"last_id\":\"%s\"}",
             cs->host, cs->port, svc->cfg.consumer, __atomic_load_n(&cs->batches, __ATOMIC_RELAXED),
             __atomic_load_n(&cs->entries, __ATOMIC_RELAXED),
             __atomic_load_n(&cs->skipped, __ATOMIC_RELAXED),
             __atomic_load_n(&cs->claimed, __ATOMIC_RELAXED),
             __atomic_load_n(&cs->released, __ATOMIC_RELAXED),
             __atomic_load_n(&cs->bad, __ATOMIC_RELAXED),
             __atomic_load_n(&cs->errors, __ATOMIC_RELAXED),
             __atomic_load_n(&cs->trimmed, __ATOMIC_RELAXED), last);
}

void consume_free(svc_t *svc)
{
    consume_t *cs = svc->consume;
    if (!cs)
        return;
    if (cs->c)
        redisFree(cs->c);
    agg_free(&cs->sums);
    free(cs);
    svc->consume = NULL;
}
