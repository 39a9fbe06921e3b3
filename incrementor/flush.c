/* The writer thread: every --flush-ms (or as soon as it is free when a
 * request waits for a commit), take every thread's window, decide the
 * deferred requests, and write the batch in one transaction.
 *
 * Exactness of the sums: a window is taken whole under its thread's lock;
 * its increments are written by one transaction (one row per key) and
 * forgotten only once that transaction has committed. A failed commit keeps
 * the acknowledged ("fast") increments for the next attempt, and answers the
 * deferred requests 503: they were not acknowledged, and are dropped.
 *
 * The int64 rule (an increment that would take a counter outside int64 gets
 * 422 and nothing of it is applied), and why it is exact:
 *
 * 1. Fast acknowledgements (buffered mode) are given only while `fast_open`,
 *    i.e. when, at this process's last commit, no counter in the database
 *    was outside +-2^61 ('red': db.c's partial index, exact whoever
 *    writes) and no failed batch was held; and only for increments
 *    whose per-key, per-thread, per-window sum of |v| stays <= 2^40. So one
 *    process holds at most 2^50 of acknowledged, uncommitted delta per key
 *    in its open windows (1024 threads at most), 2^51 counting one failed
 *    commit; at most 1024 processes register as writers (db.c). From a
 *    value in +-2^61 no combination of such deltas reaches 2^63: a fast
 *    acknowledgement can never overflow, whatever order things commit in.
 * 2. Every other request (durable mode: all of them) is decided here, inside
 *    a BEGIN IMMEDIATE transaction, which holds the database's write lock, so
 *    the committed value c read in it is exact until our commit. The batch's
 *    fast deltas are applied first, then the deferred requests in arrival
 *    order, each against the running value, whole or not at all.
 *    - Quick accept: 'red' is 0 and |fast + accepted + v| <= 2^61 for each
 *      key: then c + ... + v cannot leave int64 even with every possible
 *      unknown pending delta (bounded in 1.), so no value needs reading.
 *    - Otherwise the value is read, and the result must stay within int64
 *      shrunk by a headroom H for acknowledged deltas we can't see: those of
 *      this process's open windows (2^50) and of each other live buffered
 *      writer (2^51 each), counted in the transaction from the locks of
 *      PATH-writers, so in any PID namespace (db.c). Before refusing, the writer closes the
 *      fast path and takes every window again (a barrier, see barrier()):
 *      then this process has no unseen delta and H covers only the others.
 *    So with one process (any mode, any threads), or with processes that are
 *    all durable, H is 0 at the decision and 422 is answered exactly when
 *    the running value plus v leaves int64. With several buffered processes
 *    on one database, a request whose result would come within H (at most
 *    1023 * 2^51, about 0.03% of the range) of a limit is refused: their
 *    acknowledged-but-unseen deltas could otherwise take it over, and an
 *    acknowledged increment can never be refused later. That margin is the
 *    price of acknowledging without a cross-process round trip.
 *
 * Idempotency keys. A request with an Idempotency-Key is always deferred
 * and decided here, inside the transaction: its key is looked up in the
 * database (as committed by any process, plus what this transaction has
 * recorded so far). Found, within the window: the request is answered as
 * the recorded one was (or 422 if its fingerprint differs) and applies
 * nothing. Not found: it is decided as any request, and its key recorded
 * with the answer in the same transaction, so the key and the increment
 * commit together or not at all: a crash before the commit loses both (the
 * retry is then a first request), a crash after it keeps both (the retry is
 * answered from the record). A duplicate in the same batch finds the row
 * the first one wrote; one in a later batch, or in another process, finds
 * the committed row, since transactions are serialized by the write lock.
 * 503s record nothing: nothing was applied, a retry may apply it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/reactor.h"
#include "service.h"

#define FINAL_MS       15000 /* on exit, failed flushes are retried for this long ... */
#define FINAL_PAUSE_MS 200   /* ... this far apart */

static const char ok_body[] = "{\"ok\":true}\n";
static const char overflow_body[] =
    "{\"error\":\"the increment would take a counter outside int64; nothing applied\"}\n";
static const char failed_body[] =
    "{\"error\":\"the commit failed (database busy or I/O error); nothing applied\"}\n";
static const char nomem_body[] = "{\"error\":\"out of memory; nothing applied\"}\n";
static const char conflict_body[] =
    "{\"error\":\"Idempotency-Key already used for another request; nothing applied\"}\n";

#define TRIM_MS 1000 /* expired idempotency keys are looked for at least this often */

/* ---- windows ---- */

svc_window_t *svc_window_new(svc_t *svc, int64_t now)
{
    svc_window_t *w = svc->spare;
    if (w) {
        svc->spare = w->next;
    } else {
        w = calloc(1, sizeof *w);
        if (!w)
            return NULL;
        /* Acks are counted per ms; a window lives about --flush-ms, longer
         * only while a commit is slow. */
        w->nacks = (size_t)svc->cfg.flush_ms * 4 + 1000;
        w->acks = calloc(w->nacks, sizeof *w->acks);
        if (!w->acks) {
            free(w);
            return NULL;
        }
    }
    w->next = NULL;
    w->start_ms = now;
    return w;
}

static void window_reset(svc_window_t *w)
{
    agg_clear(&w->fast);
    w->fast_reqs = w->fast_items = 0;
    w->ndefs = w->nitems = w->keys_len = 0;
    if (w->oldest_ack_ms)
        memset(w->acks, 0, w->nacks * sizeof *w->acks);
    w->oldest_ack_ms = 0;
}

static void recycle(svc_t *svc, svc_window_t *w)
{
    window_reset(w);
    w->next = svc->spare;
    svc->spare = w;
}

void svc_window_free_list(svc_window_t *w)
{
    while (w) {
        svc_window_t *next = w->next;
        agg_free(&w->fast);
        free(w->defs);
        free(w->items);
        free(w->keys);
        free(w->acks);
        free(w);
        w = next;
    }
}

void svc_kick(svc_t *svc)
{
    /* One wake-up per flush, however many requests wait. */
    if (__atomic_exchange_n(&svc->kick, 1, __ATOMIC_ACQ_REL) == 0) {
        pthread_mutex_lock(&svc->wlock);
        pthread_cond_signal(&svc->wcond);
        pthread_mutex_unlock(&svc->wlock);
    }
}

/* ---- one flush ---- */

typedef struct flush {
    int64_t red, others; /* read in the transaction, -1 until needed */
    int barrier;         /* this process has no unseen acknowledged delta */
    int64_t wall_ms;     /* wall clock at the start: idempotency keys' time */
    uint64_t recorded;   /* idempotency keys recorded in the transaction */
} flush_t;

int64_t svc_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Take every thread's window (appended to svc->pending). */
static void swap_all(svc_t *svc)
{
    int64_t now = time_update();
    svc_window_t **tail = &svc->pending;
    while (*tail)
        tail = &(*tail)->next;
    for (int i = 0; i < svc->nthreads; i++) {
        svc_thread_t *t = &svc->threads[i];
        svc_window_t *fresh = svc_window_new(svc, now);
        if (!fresh)
            continue; /* out of memory: this thread's window waits for the next flush */
        pthread_mutex_lock(&t->lock);
        svc_window_t *old = t->cur;
        t->cur = fresh;
        pthread_mutex_unlock(&t->lock);
        if (old->fast_reqs == 0 && old->ndefs == 0) {
            recycle(svc, old);
        } else {
            *tail = old;
            tail = &old->next;
        }
    }
}

int svc_merge(svc_t *svc, svc_window_t *w)
{
    agg_entry_t *e;
    for (size_t i = 0; (e = agg_next(&w->fast, &i));) {
        if (!e->count)
            continue; /* created by a request that was then deferred */
        agg_entry_t *b = agg_get(&svc->w, agg_key(&w->fast, e), e->key_len);
        if (!b)
            return -ENOMEM;
        b->sum += e->sum; /* |sum| <= 2^51 in all (see the file comment; 2^50 in queue.c's) */
        b->count += e->count;
    }
    return 0;
}

/* SQLite's order of TEXT keys (BINARY): bytes, then the shorter first. */
static int row_cmp(const void *a, const void *b)
{
    const db_row_t *x = a, *y = b;
    int c = memcmp(x->key, y->key, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* A row's place in sort_rows: its key's first 8 bytes, and its index. */
struct svc_order {
    uint64_t pre;
    size_t i;
};

/* A key's first 8 bytes, big-endian, zero-padded. Where two keys' differ,
 * they are in row_cmp's order, a shorter key or a NUL included (its zeros
 * meet a byte that is at least as large); keys that share them tie. */
static uint64_t key_prefix(const char *k, size_t len)
{
    uint64_t p = 0;
    for (size_t i = 0; i < 8; i++)
        p = p << 8 | (i < len ? (unsigned char)k[i] : 0u);
    return p;
}

/* rows[0..n) into out[0..n) in row_cmp's order, by a radix sort of the
 * prefixes (a pass per byte in which they differ: 10,000 keys "k0".."k9999"
 * take 4), then qsort for each run of equal prefixes. a and b hold n
 * each. qsort alone cost 1,600 instructions a row, a quarter of the
 * writer's, in calls to row_cmp and memcmp. */
static void sort_rows(const db_row_t *rows, db_row_t *out, struct svc_order *a, struct svc_order *b,
                      size_t n)
{
    size_t count[8][256] = {{0}}; /* 16 KiB of the writer's stack */
    for (size_t i = 0; i < n; i++) {
        a[i] = (struct svc_order){key_prefix(rows[i].key, rows[i].len), i};
        for (int d = 0; d < 8; d++)
            count[d][a[i].pre >> (8 * d) & 0xff]++;
    }
    for (int d = 0; d < 8; d++) { /* least significant first: each pass is stable */
        size_t *c = count[d];
        if (c[a[0].pre >> (8 * d) & 0xff] == n)
            continue; /* one byte for all */
        for (size_t k = 0, pos = 0; k < 256; k++) {
            size_t t = c[k];
            c[k] = pos;
            pos += t;
        }
        for (size_t i = 0; i < n; i++)
            b[c[a[i].pre >> (8 * d) & 0xff]++] = a[i];
        struct svc_order *t = a;
        a = b;
        b = t;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = rows[a[i].i];
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && a[j].pre == a[i].pre; j++)
            ;
        if (j - i > 1)
            qsort(out + i, j - i, sizeof *out, row_cmp);
    }
}

int svc_write_sums(svc_t *svc, const agg_t *m, uint64_t *applied, uint64_t *rows)
{
    size_t n = 0;
    if (m->len > svc->rows_cap) {
        /* Two halves: the rows as the map holds them, then in key order. */
        db_row_t *r = malloc(2 * m->len * sizeof *r);
        struct svc_order *o = malloc(2 * m->len * sizeof *o);
        if (!r || !o) {
            free(r);
            free(o);
            return -ENOMEM;
        }
        free(svc->rows);
        free(svc->order);
        svc->rows = r;
        svc->order = o;
        svc->rows_cap = m->len;
    }
    agg_entry_t *e;
    for (size_t i = 0; (e = agg_next(m, &i));) {
        if (!e->count)
            continue;
        svc->rows[n++] = (db_row_t){agg_key(m, e), e->key_len, e->sum + e->slow};
        *applied += e->count;
    }
    /* In the table's order, a statement's rows share their pages. SQLite
     * copies every page a multi-row statement changes (its statement
     * journal, written to a temporary file past 64 KiB) and walks down the
     * tree to each row. In random order, 16 rows over 10,000 keys were 16
     * pages: a 4 KiB pwrite per row. Sorted, buffered mode's writer went
     * from 1.4-1.8 to 0.7-0.8 us of CPU per POST. */
    db_row_t *sorted = NULL;
    if (n > 0) { /* rows is NULL until a batch has had a row */
        sorted = svc->rows + svc->rows_cap;
        sort_rows(svc->rows, sorted, svc->order, svc->order + svc->rows_cap, n);
    }
    *rows += n;
    return db_add_rows(svc->db, sorted, n);
}

/* Close the fast path and take every window again, so that every
 * acknowledged delta of this process is in the batch. */
static int barrier(svc_t *svc, flush_t *f)
{
    svc_window_t *last = svc->pending;
    while (last->next)
        last = last->next;
    /* Stored before swap_all takes each thread's lock, read by the threads
     * under that lock: after the swap no thread acknowledges at once. */
    __atomic_store_n(&svc->fast_open, 0, __ATOMIC_RELAXED);
    swap_all(svc);
    for (svc_window_t *w = last->next; w; w = w->next)
        if (svc_merge(svc, w) < 0)
            return -ENOMEM;
    f->barrier = 1;
    __atomic_add_fetch(&svc->barriers, 1, __ATOMIC_RELAXED);
    return 0;
}

static int magnitude_ok(int64_t a, int64_t b, int64_t c, int64_t bound)
{
    int64_t x;
    if (__builtin_add_overflow(a, b, &x) || __builtin_add_overflow(x, c, &x))
        return 0;
    return x >= -bound && x <= bound;
}

/* Can item (key, v) be applied after what the batch holds for its key?
 * Returns 1 yes, 0 no (overflow), 2 only after a barrier, or a negative
 * errno for a failed read. */
static int check_item(svc_t *svc, flush_t *f, const char *key, size_t len, int64_t v)
{
    agg_entry_t *e = agg_find(&svc->w, key, len);
    int rc;
    if (f->red < 0 && (rc = db_red(svc->db, &f->red)) < 0)
        return rc;
    if (f->red == 0 && magnitude_ok(e->sum, e->slow, v, DB_GREEN))
        return 1;
    if (!e->known) {
        int64_t c = 0;
        if ((rc = db_value(svc->db, key, len, &c)) < 0)
            return rc;
        e->value = rc ? c : 0;
        e->known = 1;
    }
    if (f->others < 0 && (rc = db_other_buffered(svc->db, &f->others)) < 0)
        return rc;
    int own = !svc->cfg.durable && !f->barrier;
    int64_t h = f->others * SVC_PROC_PENDING + (own ? SVC_OWN_PENDING : 0), x;
    int ok = !__builtin_add_overflow(e->value, e->sum, &x) &&
             !__builtin_add_overflow(x, e->slow, &x) && !__builtin_add_overflow(x, v, &x) &&
             x >= INT64_MIN + h && x <= INT64_MAX - h;
    return ok ? 1 : own ? 2 : 0;
}

/* Decide one deferred request's increments: SVC_OK, SVC_OVERFLOW or
 * SVC_NOMEM, or a negative errno when the transaction can't go on. */
static int decide_items(svc_t *svc, flush_t *f, svc_window_t *w, svc_deferred_t *d)
{
    const svc_item_t *it = w->items + d->item_off;
again:
    for (uint32_t i = 0; i < d->nitems; i++)
        if (!agg_get(&svc->w, w->keys + it[i].key_off, it[i].key_len))
            return SVC_NOMEM;
    for (uint32_t i = 0; i < d->nitems; i++) {
        int rc = check_item(svc, f, w->keys + it[i].key_off, it[i].key_len, it[i].v);
        if (rc < 0)
            return rc;
        if (rc == 2) {
            if ((rc = barrier(svc, f)) < 0)
                return rc;
            goto again; /* the batch changed: check again from the start */
        }
        if (rc == 0)
            return SVC_OVERFLOW;
    }
    for (uint32_t i = 0; i < d->nitems; i++) {
        agg_entry_t *e = agg_find(&svc->w, w->keys + it[i].key_off, it[i].key_len);
        e->slow += it[i].v;
        e->count++;
    }
    return SVC_OK;
}

/* Decide one deferred request, its Idempotency-Key first (see the top):
 * an enum svc_outcome, or a negative errno when the transaction can't go
 * on. */
static int decide(svc_t *svc, flush_t *f, svc_window_t *w, svc_deferred_t *d)
{
    if (!d->idem_len)
        return decide_items(svc, f, w, d);
    const char *key = w->keys + d->idem_off;
    int64_t fp;
    int status;
    int rc =
        db_idem_get(svc->db, key, d->idem_len, f->wall_ms - svc->cfg.idem_window_ms, &fp, &status);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        d->replay = 1;
        return (uint64_t)fp != d->fp ? SVC_CONFLICT : status == 200 ? SVC_OK : SVC_OVERFLOW;
    }
    int out = decide_items(svc, f, w, d);
    if (out == SVC_OK || out == SVC_OVERFLOW) {
        if ((rc = db_idem_put(svc->db, key, d->idem_len, (int64_t)d->fp, out == SVC_OK ? 200 : 422,
                              f->wall_ms)) < 0)
            return rc;
        f->recorded++;
    }
    return out;
}

static int answer(session_t *s, void *arg)
{
    int out = (int)(intptr_t)arg;
    int status = out == SVC_OK ? 200 : out == SVC_OVERFLOW || out == SVC_CONFLICT ? 422 : 503;
    const char *body = out == SVC_OK         ? ok_body
                       : out == SVC_OVERFLOW ? overflow_body
                       : out == SVC_CONFLICT ? conflict_body
                       : out == SVC_FAILED   ? failed_body
                                             : nomem_body;
    return session_resume(s, status, "application/json", body, strlen(body));
}

/* Send every decided answer of the windows back to its connection's loop
 * (unless the loops are gone). */
static void post_answers(svc_window_t *windows, int gone)
{
    for (svc_window_t *w = windows; w; w = w->next) {
        for (size_t i = 0; i < w->ndefs && !gone; i++)
            while (reactor_post(w->defs[i].s, answer, (void *)(intptr_t)w->defs[i].outcome) < 0)
                usleep(1000); /* out of memory: the answer must still get back */
    }
}

static void count_pending(svc_t *svc)
{
    uint64_t items = 0;
    for (svc_window_t *w = svc->pending; w; w = w->next)
        items += w->fast_items + w->nitems;
    __atomic_store_n(&svc->pending_items, items, __ATOMIC_RELAXED);
    __atomic_store_n(&svc->pending_keys, svc->w.len, __ATOMIC_RELAXED);
}

/* What a transaction wrote, for the counters once it has committed. */
typedef struct written {
    uint64_t applied, rows; /* increments, and rows written for them */
    int64_t evicted;        /* idempotency keys trimmed */
    int64_t keys_left;      /* idempotency keys kept, -1 when not trimmed */
    int64_t red;            /* the red flag (buffered mode), 1 when not read */
} written_t;

/* In the open transaction: decide every deferred request, add the merged
 * sums, trim the idempotency keys, read the red flag, and commit. Returns 0
 * or a negative errno (the caller rolls back). */
static int write_txn(svc_t *svc, flush_t *f, written_t *wr)
{
    int rc;
    for (svc_window_t *w = svc->pending; w; w = w->next) /* barriers append to the list */
        for (size_t i = 0; i < w->ndefs; i++) {
            int out = decide(svc, f, w, &w->defs[i]);
            if (out < 0)
                return out;
            w->defs[i].outcome = (uint8_t)out;
        }
    /* The gear ratio: one row write for all of a key's increments. */
    if ((rc = svc_write_sums(svc, &svc->w, &wr->applied, &wr->rows)) < 0)
        return rc;
    /* Keys past the window or the bound go in the transactions that add
     * keys, and once a second in others. */
    wr->keys_left = -1;
    wr->red = 1;
    int trim = f->recorded || f->wall_ms - svc->idem_trimmed_ms >= TRIM_MS ||
               f->wall_ms < svc->idem_trimmed_ms; /* the clock was set back */
    if (trim && (rc = db_idem_trim(svc->db, f->wall_ms - svc->cfg.idem_window_ms,
                                   svc->cfg.idem_keys, &wr->evicted, &wr->keys_left)) < 0)
        return rc;
    if (!svc->cfg.durable && (rc = db_red(svc->db, &wr->red)) < 0)
        return rc;
    return db_commit(svc->db);
}

/* A committed batch of a durable writer, waiting for the WAL's sync. */
typedef struct svc_batch {
    svc_window_t *windows;
    written_t wr;
    int64_t t0;
    struct svc_batch *next;
} svc_batch_t;

/* Durable: the batch's commit is durable. The lag of what was acknowledged
 * early, the counters, then the answers. Writer or syncer thread; the
 * windows stay the caller's. */
static void answered(svc_t *svc, svc_window_t *windows, const written_t *wr, int64_t t0)
{
    uint64_t applied_reqs = 0, deferred_ok = 0, rejected = 0, replayed = 0, conflicts = 0;
    int64_t now = time_update();
    for (svc_window_t *w = windows; w; w = w->next) {
        applied_reqs += w->fast_reqs;
        if (w->oldest_ack_ms)
            for (size_t k = 0; k < w->nacks; k++)
                lag_add(&svc->lag, now - (w->start_ms + (int64_t)k), w->acks[k]);
        for (size_t i = 0; i < w->ndefs; i++) {
            const svc_deferred_t *d = &w->defs[i];
            if (d->replay) {
                replayed += d->outcome != SVC_CONFLICT;
                conflicts += d->outcome == SVC_CONFLICT;
            } else if (d->outcome == SVC_OK) {
                lag_add(&svc->wait, now - d->t_ms, 1);
                applied_reqs++;
                deferred_ok++;
            } else if (d->outcome == SVC_OVERFLOW) {
                rejected++;
            }
        }
    }
    /* The counters first, then the answers: a client that reads /stats
     * after its answer sees its request counted. */
    __atomic_add_fetch(&svc->applied, wr->applied, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->applied_reqs, applied_reqs, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->deferred_ok, deferred_ok, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->rejected_overflow, rejected, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->flushes, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->rows_written, wr->rows, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->idem_replayed, replayed, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->idem_conflicts, conflicts, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->idem_evicted, (uint64_t)wr->evicted, __ATOMIC_RELAXED);
    __atomic_store_n(&svc->last_flush_us, (uint64_t)(time_now_us() - t0), __ATOMIC_RELAXED);
    post_answers(windows, __atomic_load_n(&svc->loops_gone, __ATOMIC_ACQUIRE));
}

/* A durable commit is written, not synced (db_wal_sync): its answers wait
 * for a sync that starts after it. */
static void wal_sync_or_die(svc_t *svc)
{
    int rc = db_wal_sync(svc->db);
    if (rc == 0)
        return;
    /* Committed but maybe not durable, and a failed fsync may have dropped
     * the pages it could not write (the kernel marks them clean): neither a
     * 200 nor a 503 would be true. Stop as a crash would, answering
     * nothing; the clients retry (with an Idempotency-Key, exactly once). */
    fprintf(stderr, "incrementor: syncing the WAL failed (%s): exiting without answering\n",
            strerror(-rc));
    _exit(1);
}

/* Committed (written): the writer's own state, then the answers at once
 * (buffered) or once a sync has made it durable (durable: handed to the
 * syncer, so the writer goes on with the next batch during the sync). */
static void committed(svc_t *svc, const flush_t *f, const written_t *wr, int64_t t0)
{
    if (wr->keys_left >= 0) {
        __atomic_store_n(&svc->idem_keys, (uint64_t)wr->keys_left, __ATOMIC_RELAXED);
        svc->idem_trimmed_ms = f->wall_ms;
    }
    svc_wal_check(svc);
    __atomic_store_n(&svc->fast_open, !svc->cfg.durable && wr->red == 0, __ATOMIC_RELAXED);
    __atomic_store_n(&svc->pending_items, 0, __ATOMIC_RELAXED); /* all of it committed */
    __atomic_store_n(&svc->pending_keys, 0, __ATOMIC_RELAXED);
    agg_clear(&svc->w);
    svc_window_t *windows = svc->pending;
    svc->pending = NULL;
    svc_batch_t *b = svc->cfg.durable && svc->sync_running ? malloc(sizeof *b) : NULL;
    if (b) {
        *b = (svc_batch_t){windows, *wr, t0, NULL};
        pthread_mutex_lock(&svc->slock);
        *svc->sync_tail = b;
        svc->sync_tail = &b->next;
        pthread_cond_signal(&svc->scond);
        pthread_mutex_unlock(&svc->slock);
        return;
    }
    /* Buffered; or no syncer (it could not start, or no memory for the
     * batch): sync here, in line, as a FULL commit would. */
    if (svc->cfg.durable)
        wal_sync_or_die(svc);
    answered(svc, windows, wr, t0);
    while (windows) {
        svc_window_t *w = windows;
        windows = w->next;
        recycle(svc, w);
    }
}

void *svc_syncer_main(void *arg)
{
    svc_t *svc = arg;
    pthread_mutex_lock(&svc->slock);
    for (;;) {
        while (!svc->sync_q && !svc->sync_stop)
            pthread_cond_wait(&svc->scond, &svc->slock);
        if (!svc->sync_q)
            break; /* stopping, and the writer (joined before) queues no more */
        svc_batch_t *q = svc->sync_q;
        svc->sync_q = NULL;
        svc->sync_tail = &svc->sync_q;
        pthread_cond_signal(&svc->staken);
        pthread_mutex_unlock(&svc->slock);
        /* Every batch taken was committed before it was queued: this one
         * sync makes them all durable (group commit). Meanwhile the writer
         * writes the next batch. */
        wal_sync_or_die(svc);
        svc_window_t *done = NULL, **tail = &done;
        while (q) {
            svc_batch_t *b = q;
            q = b->next;
            answered(svc, b->windows, &b->wr, b->t0);
            *tail = b->windows;
            while (*tail)
                tail = &(*tail)->next;
            free(b);
        }
        pthread_mutex_lock(&svc->slock);
        *tail = svc->synced; /* the windows go back to the writer (spare list) */
        svc->synced = done;
    }
    pthread_mutex_unlock(&svc->slock);
    return NULL;
}

/* Writer, before it takes a batch: take back the windows the syncer is
 * done with; and while the syncer has not yet taken the last batch
 * committed (it is syncing the one before), wait for it. So one batch is
 * written while the previous one syncs, no more: batches committed
 * further ahead would be smaller, and a commit costs per page written
 * (with keys spread over the table, nearly a page per key) more than per
 * request. The requests that arrive meanwhile make the next batch. */
static void take_synced(svc_t *svc)
{
    if (!svc->cfg.durable)
        return;
    pthread_mutex_lock(&svc->slock);
    while (svc->sync_q)
        pthread_cond_wait(&svc->staken, &svc->slock);
    svc_window_t *w = svc->synced;
    svc->synced = NULL;
    pthread_mutex_unlock(&svc->slock);
    while (w) {
        svc_window_t *next = w->next;
        recycle(svc, w);
        w = next;
    }
}

/* The flush failed with rc: roll back, answer the deferred requests 503
 * and forget them. Acknowledged increments stay pending, and the fast path
 * stays closed until they are committed (it bounds what is held, see the
 * top). */
static void failed(svc_t *svc, int rc)
{
    db_rollback(svc->db);
    __atomic_store_n(&svc->fast_open, 0, __ATOMIC_RELAXED);
    uint64_t nfailed = 0;
    for (svc_window_t *w = svc->pending; w; w = w->next) {
        for (size_t i = 0; i < w->ndefs; i++)
            w->defs[i].outcome = rc == -ENOMEM ? SVC_NOMEM : SVC_FAILED;
        nfailed += w->ndefs;
    }
    __atomic_add_fetch(&svc->failed_reqs, nfailed, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->failed_flushes, 1, __ATOMIC_RELAXED);
    post_answers(svc->pending, __atomic_load_n(&svc->loops_gone, __ATOMIC_ACQUIRE));
    uint64_t kept = 0;
    for (svc_window_t *w = svc->pending; w; w = w->next) {
        w->ndefs = w->nitems = w->keys_len = 0;
        kept += w->fast_items;
    }
    fprintf(stderr,
            "incrementor: flush failed (%s): %llu deferred requests answered 503, "
            "%llu acknowledged increments kept for the next flush\n",
            rc == -ENOMEM ? "out of memory" : db_errmsg(svc->db), (unsigned long long)nfailed,
            (unsigned long long)kept);
    count_pending(svc);
}

/* Write what is pending. Returns 0 (also when there was nothing), or a
 * negative errno when the commit failed (acknowledged increments are kept). */
static int flush_once(svc_t *svc)
{
    /* Only this thread writes fast_open: if it was closed before this swap,
     * no window taken or left open holds a fast acknowledgement. */
    flush_t f = {-1, -1, !__atomic_load_n(&svc->fast_open, __ATOMIC_RELAXED), svc_wall_ms(), 0};
    written_t wr = {0};
    int64_t t0 = time_now_us();
    int rc = 0;
    __atomic_store_n(&svc->kick, 0, __ATOMIC_RELEASE);
    take_synced(svc);
    swap_all(svc);
    if (!svc->pending)
        return 0;
    agg_clear(&svc->w);
    for (svc_window_t *w = svc->pending; w && rc == 0; w = w->next)
        rc = svc_merge(svc, w);
    if (rc == 0) {
        count_pending(svc);
        rc = db_begin(svc->db);
    }
    if (rc >= 0)
        rc = write_txn(svc, &f, &wr);
    if (rc < 0) {
        failed(svc, rc);
        return rc;
    }
    committed(svc, &f, &wr, t0);
    return 0;
}

int svc_wait_work(svc_t *svc, int64_t until)
{
    pthread_mutex_lock(&svc->wlock);
    while (!svc->stop && !__atomic_load_n(&svc->kick, __ATOMIC_ACQUIRE)) {
        int64_t now = time_update();
        if (now >= until)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = ts.tv_nsec + (until - now) * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&svc->wcond, &svc->wlock, &ts);
    }
    int stop = svc->stop;
    pthread_mutex_unlock(&svc->wlock);
    return stop;
}

int64_t svc_next_window(int64_t due, int64_t now, int flush_ms)
{
    /* A taker late by d made the next window flush_ms + d long when it was
     * counted from the wake-up, and the lag with it: under a quota of 0.4
     * CPU in 100 ms periods d is up to 60 ms. Two web nodes' lag p99 was
     * 160-179 ms counted so, 149-194 on the clock (8 runs each of
     * scripts/bench --scenarios incrementor-nodes, alternating; lower in 7
     * of the 8 pairs). */
    if (now < due)
        return due;
    due += flush_ms;
    return due > now ? due : now + flush_ms;
}

void *svc_writer_main(void *arg)
{
    svc_t *svc = arg;
    int64_t next = time_update() + svc->cfg.flush_ms;
    for (;;) {
        int stop = svc_wait_work(svc, next);
        next = svc_next_window(next, time_update(), svc->cfg.flush_ms);
        int rc = flush_once(svc);
        if (!stop)
            continue;
        /* The loops are gone: what is left must reach the database. */
        int64_t until = time_update() + FINAL_MS;
        while ((rc < 0 || svc->pending) && time_update() < until) {
            usleep(FINAL_PAUSE_MS * 1000);
            rc = flush_once(svc);
        }
        if (rc < 0 || svc->pending) {
            fprintf(stderr, "incrementor: giving up: %llu acknowledged increments not written\n",
                    (unsigned long long)svc->pending_items);
            svc->exit_status = 1;
        }
        return NULL;
    }
}

void svc_wal_check(svc_t *svc)
{
    if (db_wal_frames(svc->db) < DB_WAL_RESTART)
        return;
    pthread_mutex_lock(&svc->wlock);
    svc->ckpt_kick = 1;
    pthread_cond_signal(&svc->ccond);
    pthread_mutex_unlock(&svc->wlock);
}

/* The checkpointer's next tick: SVC_CHECKPOINT_MS from now (whole seconds). */
static void next_tick(struct timespec *tick)
{
    clock_gettime(CLOCK_MONOTONIC, tick);
    tick->tv_sec += SVC_CHECKPOINT_MS / 1000;
}

void *svc_checkpointer_main(void *arg)
{
    svc_t *svc = arg;
    struct timespec tick;
    int calm = 0; /* the last checkpoint failed: until the next tick, kicks wait */
    next_tick(&tick);
    pthread_mutex_lock(&svc->wlock);
    while (!svc->stop) {
        /* A kick after every commit past the limit: were a reader holding
         * the WAL (db_checkpoint's -EBUSY), each would stall the writer
         * again. So after a failure only the tick retries. */
        if (!(svc->ckpt_kick && !calm) &&
            pthread_cond_timedwait(&svc->ccond, &svc->wlock, &tick) != ETIMEDOUT)
            continue; /* woken: kicked, stopping, or nothing */
        if (svc->stop)
            break;
        svc->ckpt_kick = 0;
        pthread_mutex_unlock(&svc->wlock);
        calm = db_checkpoint(svc->ckpt) < 0;
        pthread_mutex_lock(&svc->wlock);
        next_tick(&tick);
    }
    pthread_mutex_unlock(&svc->wlock);
    return NULL;
}

/* ---- for the web nodes (queue.c), which take and answer windows as the
 * writer does but hand them to Redis ---- */

void svc_take_windows(svc_t *svc)
{
    swap_all(svc);
}

void svc_answer_pending(svc_t *svc)
{
    post_answers(svc->pending, __atomic_load_n(&svc->loops_gone, __ATOMIC_ACQUIRE));
}

void svc_recycle_pending(svc_t *svc)
{
    while (svc->pending) {
        svc_window_t *w = svc->pending;
        svc->pending = w->next;
        recycle(svc, w);
    }
}
