/* The incrementor's HTTP side: POST /increment, GET /counters, /stats, and
 * its lines in /metrics. Runs on the loop threads of the reactor (servers/core/reactor.c). */
#include "service.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "core/reactor.h"

#define JSON         "application/json"
#define PAGE_DEFAULT 100
#define PAGE_MAX     1000

static const char ok_body[] = "{\"ok\":true}\n";

static void respond_error(session_t *s, int status, const char *why)
{
    char body[512];
    json_t *j = json_pack("{s:s}", "error", why);
    char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    int n = snprintf(body, sizeof body, "%s\n", txt ? txt : "{\"error\":\"out of memory\"}");
    free(txt);
    json_decref(j);
    session_respond(s, status, JSON, body, (size_t)n < sizeof body ? (size_t)n : sizeof body - 1);
}

static int path_is(const http_request_t *r, const char *p)
{
    size_t n = strlen(p);
    return r->path_len == n && memcmp(r->path, p, n) == 0;
}

static int method_is(const http_request_t *r, const char *m)
{
    size_t n = strlen(m);
    return r->method_len == n && memcmp(r->method, m, n) == 0;
}

static uint64_t magnitude(int64_t v)
{
    return v < 0 ? -(uint64_t)v : (uint64_t)v;
}

static void count(uint64_t *c)
{
    /* Only this thread writes it; /stats reads it from another. */
    __atomic_store_n(c, *c + 1, __ATOMIC_RELAXED);
}

/* Grow an array to hold `need` elements. 0 or -ENOMEM. */
static int reserve(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * size);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

/* Try to acknowledge at once: the window's fast map takes the request whole
 * or not at all. Returns 1 when taken. Called with the thread's lock held. */
static int take_fast(svc_window_t *w, const req_item_t *it, size_t n, int64_t now)
{
    /* First create every entry (a new entry has count 0 and the writer
     * ignores it), so that nothing below can fail half-way. An entry's
     * pointer lasts until the next agg_get: a single item's (every form
     * POST's) is still good below, saving two lookups of its key; more
     * items are found again. */
    agg_entry_t *last = NULL;
    for (size_t i = 0; i < n; i++)
        if (magnitude(it[i].value) > (uint64_t)SVC_FAST_MAX ||
            !(last = agg_get(&w->fast, it[i].key, it[i].key_len)))
            return 0;
    for (size_t i = 0; i < n; i++) {
        agg_entry_t *e = n == 1 ? last : agg_find(&w->fast, it[i].key, it[i].key_len);
        if (e->mag + magnitude(it[i].value) > (uint64_t)SVC_FAST_MAX)
            return 0;
    }
    for (size_t i = 0; i < n; i++) {
        agg_entry_t *e = n == 1 ? last : agg_find(&w->fast, it[i].key, it[i].key_len);
        e->sum += it[i].value; /* |sum| <= mag <= 2^40: no overflow */
        e->mag += magnitude(it[i].value);
        e->count++;
    }
    w->fast_reqs++;
    w->fast_items += n;
    int64_t off = now - w->start_ms;
    if (off < 0)
        off = 0;
    if ((size_t)off >= w->nacks)
        off =
            (int64_t)w->nacks - 1; /* a late window: counted as older, so lag is not understated */
    w->acks[off]++;
    if (!w->oldest_ack_ms)
        w->oldest_ack_ms = now;
    return 1;
}

/* Keep the request (with its Idempotency-Key, ik_len 0 for none, and the
 * items' fingerprint) for the writer. 0 or -ENOMEM. Lock held. */
static int take_deferred(svc_window_t *w, session_t *s, const req_item_t *it, size_t n,
                         const char *ik, size_t ik_len, uint64_t fp, int64_t now)
{
    size_t klen = ik_len;
    for (size_t i = 0; i < n; i++)
        klen += it[i].key_len;
    if (reserve((void **)&w->defs, &w->cap_defs, w->ndefs + 1, sizeof *w->defs) < 0 ||
        reserve((void **)&w->items, &w->cap_items, w->nitems + n, sizeof *w->items) < 0 ||
        reserve((void **)&w->keys, &w->keys_cap, w->keys_len + klen, 1) < 0 ||
        w->keys_len + klen > UINT32_MAX)
        return -ENOMEM;
    svc_deferred_t *d = &w->defs[w->ndefs++];
    *d = (svc_deferred_t){
        .s = s, .t_ms = now, .item_off = (uint32_t)w->nitems, .nitems = (uint32_t)n};
    for (size_t i = 0; i < n; i++) {
        memcpy(w->keys + w->keys_len, it[i].key, it[i].key_len);
        w->items[w->nitems++] =
            (svc_item_t){(uint32_t)w->keys_len, (uint32_t)it[i].key_len, it[i].value};
        w->keys_len += it[i].key_len;
    }
    if (ik_len) {
        d->fp = fp;
        d->idem_off = (uint32_t)w->keys_len;
        d->idem_len = (uint16_t)ik_len; /* <= REQ_IDEM_MAX */
        memcpy(w->keys + w->keys_len, ik, ik_len);
        w->keys_len += ik_len;
    }
    return 0;
}

static void increment(svc_t *svc, session_t *s, const http_request_t *r, const char *body,
                      size_t len)
{
    svc_thread_t *t = &svc->threads[reactor_thread_index()];
    char err[256], keybuf[REQ_KEY_MAX];
    req_item_t one, *items = &one;
    json_t *root = NULL;
    const char *ik;
    size_t n = 1, ik_len;
    int st;
    if (!method_is(r, "POST")) {
        count(&t->counts.refused);
        respond_error(s, 405, "POST /increment only");
        return;
    }
    const http_header_t *ct = http_find_header(r->headers, r->num_headers, "Content-Type");
    int kind = req_content_kind(ct ? ct->value : NULL, ct ? ct->value_len : 0);
    if (!kind) {
        count(&t->counts.refused);
        respond_error(s, 415,
                      "Content-Type must be application/x-www-form-urlencoded or "
                      "application/json");
        return;
    }
    if ((st = req_idem_key(r->headers, r->num_headers, &ik, &ik_len, err, sizeof err)) == 0)
        st = kind == REQ_FORM ? req_parse_form(body, len, keybuf, &one, err, sizeof err)
                              : req_parse_json(body, len, &root, &items, &n, err, sizeof err);
    if (st) {
        count(&t->counts.refused);
        respond_error(s, st, err);
        return;
    }
    uint64_t fp = ik_len ? req_fingerprint(items, n) : 0;
    int64_t now = time_now_ms();
    pthread_mutex_lock(&t->lock);
    /* fast_open is read under the lock: the writer closes it before it
     * swaps the windows (taking this lock), so once it has swapped, no
     * fast acknowledgement can escape what it took. A request with an
     * Idempotency-Key always waits for the commit that records its key:
     * only the writer, inside its transaction, can tell a retry (from any
     * process on the database) from a first request. */
    int64_t until = __atomic_load_n(&svc->fast_until, __ATOMIC_RELAXED); /* queue.c's lease */
    int fast = !svc->cfg.durable && !ik_len && __atomic_load_n(&svc->fast_open, __ATOMIC_RELAXED) &&
               (!until || now < until) && take_fast(t->cur, items, n, now);
    int rc = fast ? 0 : take_deferred(t->cur, s, items, n, ik, ik_len, fp, now);
    pthread_mutex_unlock(&t->lock);
    if (fast) {
        __atomic_store_n(&t->counts.accepted_items, t->counts.accepted_items + n, __ATOMIC_RELAXED);
        count(&t->counts.accepted);
        session_respond_canned(s, &svc->ok);
    } else if (rc < 0) {
        respond_error(s, 503, "out of memory");
    } else {
        count(&t->counts.deferred);
        session_defer(s);
        svc_kick(svc);
    }
    if (root) {
        json_decref(root);
        free(items);
    }
}

static db_t *reader(svc_t *svc, svc_thread_t *t, session_t *s)
{
    char err[256];
    if (!t->reader && db_open_reader(&t->reader, svc->cfg.db_path, err, sizeof err) < 0) {
        t->reader = NULL;
        respond_error(s, 503, err);
    }
    return t->reader;
}

static void get_one(svc_t *svc, session_t *s, const char *raw, size_t raw_len)
{
    svc_thread_t *t = &svc->threads[reactor_thread_index()];
    char key[3 * REQ_KEY_MAX];
    const char *why;
    ssize_t n = raw_len <= sizeof key ? http_url_decode(raw, raw_len, key, 0) : REQ_KEY_MAX + 1;
    if (n < 0) {
        respond_error(s, 400, "bad percent-encoding in key");
        return;
    }
    if (req_key_check(key, (size_t)n, &why) < 0) {
        respond_error(s, 400, why);
        return;
    }
    db_t *d = reader(svc, t, s);
    if (!d)
        return;
    int64_t v;
    int rc = db_value(d, key, (size_t)n, &v);
    if (rc < 0) {
        respond_error(s, 503, db_errmsg(d));
        return;
    }
    if (rc == 0) {
        respond_error(s, 404, "no such counter");
        return;
    }
    json_t *j = json_pack("{s:s%,s:I}", "key", key, (size_t)n, "value", (json_int_t)v);
    char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (txt) {
        size_t l = strlen(txt);
        txt[l] = '\n'; /* replaces the NUL: the length is known */
        session_respond(s, 200, JSON, txt, l + 1);
    } else {
        respond_error(s, 503, "out of memory");
    }
    free(txt);
    json_decref(j);
}

static void page_row(const char *key, size_t len, int64_t value, void *ctx)
{
    json_t *arr = ctx;
    json_array_append_new(arr,
                          json_pack("{s:s%,s:I}", "key", key, len, "value", (json_int_t)value));
}

static void get_page(svc_t *svc, session_t *s, const http_request_t *r)
{
    svc_thread_t *t = &svc->threads[reactor_thread_index()];
    char after[3 * REQ_KEY_MAX];
    ssize_t alen = 0;
    int64_t limit = PAGE_DEFAULT;
    const char *v;
    size_t vlen;
    if (http_query_get(r->query, r->query_len, "after", &v, &vlen) == 0) {
        alen = vlen <= sizeof after ? http_url_decode(v, vlen, after, 1) : -1;
        if (alen < 0 || alen > REQ_KEY_MAX) {
            respond_error(s, 400, "after: a percent-encoded key of at most 256 bytes");
            return;
        }
    }
    if (http_query_get(r->query, r->query_len, "limit", &v, &vlen) == 0 &&
        (req_parse_i64(v, vlen, &limit) < 0 || limit < 1 || limit > PAGE_MAX)) {
        respond_error(s, 400, "limit: an integer from 1 to 1000");
        return;
    }
    db_t *d = reader(svc, t, s);
    if (!d)
        return;
    json_t *arr = json_array();
    int rc = arr ? db_page(d, after, (size_t)alen, (int)limit, page_row, arr) : -ENOMEM;
    if (rc < 0) {
        json_decref(arr);
        respond_error(s, 503, rc == -ENOMEM ? "out of memory" : db_errmsg(d));
        return;
    }
    /* "next" is the `after` of the following page, null on the last one. */
    json_t *last =
        json_array_size(arr) == (size_t)limit ? json_array_get(arr, (size_t)limit - 1) : NULL;
    json_t *j = json_pack("{s:o,s:O}", "counters", arr, "next",
                          last ? json_object_get(last, "key") : json_null());
    char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (txt)
        session_respond(s, 200, JSON, txt, strlen(txt));
    else
        respond_error(s, 503, "out of memory");
    free(txt);
    json_decref(j);
}

/* ---- statistics ---- */

typedef struct snapshot {
    uint64_t accepted, accepted_items, deferred, refused;
    uint64_t pending_keys, pending_items, deferred_waiting;
} snapshot_t;

static void snapshot(svc_t *svc, snapshot_t *sn)
{
    memset(sn, 0, sizeof *sn);
    for (int i = 0; i < svc->nthreads; i++) {
        svc_thread_t *t = &svc->threads[i];
        sn->accepted += __atomic_load_n(&t->counts.accepted, __ATOMIC_RELAXED);
        sn->accepted_items += __atomic_load_n(&t->counts.accepted_items, __ATOMIC_RELAXED);
        sn->deferred += __atomic_load_n(&t->counts.deferred, __ATOMIC_RELAXED);
        sn->refused += __atomic_load_n(&t->counts.refused, __ATOMIC_RELAXED);
        pthread_mutex_lock(&t->lock);
        sn->pending_keys += t->cur->fast.len;
        sn->pending_items += t->cur->fast_items;
        sn->deferred_waiting += t->cur->ndefs;
        pthread_mutex_unlock(&t->lock);
    }
    /* What the writer has taken and not yet committed (keys may be counted
     * once per thread window that holds them). */
    sn->pending_keys += __atomic_load_n(&svc->pending_keys, __ATOMIC_RELAXED);
    sn->pending_items += __atomic_load_n(&svc->pending_items, __ATOMIC_RELAXED);
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

static void stats(svc_t *svc, session_t *s)
{
    snapshot_t sn;
    char body[3072], role[768] = "";
    uint64_t lag_n, lag_max, lag_p50, lag_p99;
    snapshot(svc, &sn);
    svc_lag(svc, &lag_n, &lag_max, &lag_p50, &lag_p99);
    if (svc->queue || svc->consume) {
        role[0] = ',';
        (svc->queue ? queue_stats : consume_stats)(svc, role + 1, sizeof role - 1);
    }
    int n = snprintf(
        body, sizeof body,
        "{\"ack\":\"%s\",\"flush_ms\":%d,\"threads\":%d,"
        "\"accepted\":%" PRIu64 ",\"accepted_increments\":%" PRIu64 ","
        "\"deferred\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"rejected_overflow\":%" PRIu64 ","
        "\"failed\":%" PRIu64 ",\"applied\":%" PRIu64 ",\"applied_requests\":%" PRIu64 ","
        "\"pending_keys\":%" PRIu64 ",\"pending_increments\":%" PRIu64 ","
        "\"pending_deferred\":%" PRIu64 ",\"flushes\":%" PRIu64 ",\"rows_written\":%" PRIu64 ","
        "\"failed_flushes\":%" PRIu64 ","
        "\"barriers\":%" PRIu64 ",\"last_flush_ms\":%.3f,\"fast_path\":%s,"
        "\"idempotency\":{\"window_s\":%" PRId64 ",\"max_keys\":%" PRId64 ",\"keys\":%" PRIu64
        ",\"replayed\":%" PRIu64 ",\"conflicts\":%" PRIu64 ",\"evicted\":%" PRIu64 "},"
        "\"lag_ms\":{\"count\":%" PRIu64 ",\"max\":%" PRIu64 ",\"p50\":%" PRIu64 ",\"p99\":%" PRIu64
        "},\"durable_wait_ms\":{\"count\":%" PRIu64 ",\"max\":%" PRIu64 ",\"p50\":%" PRIu64
        ",\"p99\":%" PRIu64 "}%s}\n",
        svc->cfg.durable ? "durable" : "buffered", svc->cfg.flush_ms, svc->nthreads,
        sn.accepted + LOAD(svc->deferred_ok), sn.accepted_items, sn.deferred, sn.refused,
        LOAD(svc->rejected_overflow), LOAD(svc->failed_reqs), LOAD(svc->applied),
        LOAD(svc->applied_reqs), sn.pending_keys, sn.pending_items, sn.deferred_waiting,
        LOAD(svc->flushes), LOAD(svc->rows_written), LOAD(svc->failed_flushes), LOAD(svc->barriers),
        (double)LOAD(svc->last_flush_us) / 1000.0, LOAD(svc->fast_open) ? "true" : "false",
        svc->cfg.idem_window_ms / 1000, svc->cfg.idem_keys, LOAD(svc->idem_keys),
        LOAD(svc->idem_replayed), LOAD(svc->idem_conflicts), LOAD(svc->idem_evicted), lag_n,
        lag_max, lag_p50, lag_p99, LOAD(svc->wait.n), LOAD(svc->wait.max),
        lag_quantile(&svc->wait, 0.5), lag_quantile(&svc->wait, 0.99), role);
    session_respond(s, 200, JSON, body, (size_t)n < sizeof body ? (size_t)n : sizeof body - 1);
}

static void metrics_lines(buf_t *out, void *ctx)
{
    svc_t *svc = ctx;
    snapshot_t sn;
    uint64_t lag_n, lag_max, lag_p50, lag_p99;
    snapshot(svc, &sn);
    svc_lag(svc, &lag_n, &lag_max, &lag_p50, &lag_p99);
    buf_printf(
        out,
        "# HELP incrementor_accepted_total Increments acknowledged to their clients.\n"
        "# TYPE incrementor_accepted_total counter\n"
        "incrementor_accepted_total %" PRIu64 "\n"
        "# HELP incrementor_refused_total Increments refused, by reason.\n"
        "# TYPE incrementor_refused_total counter\n"
        "incrementor_refused_total{reason=\"input\"} %" PRIu64 "\n"
        "incrementor_refused_total{reason=\"overflow\"} %" PRIu64 "\n"
        "incrementor_refused_total{reason=\"commit\"} %" PRIu64 "\n"
        "incrementor_refused_total{reason=\"idempotency_conflict\"} %" PRIu64 "\n"
        "# HELP incrementor_applied_total Increments applied to the in-memory sums.\n"
        "# TYPE incrementor_applied_total counter\n"
        "incrementor_applied_total %" PRIu64 "\n"
        "# HELP incrementor_pending_increments Increments applied in memory, not yet written to "
        "the database.\n"
        "# TYPE incrementor_pending_increments gauge\n"
        "incrementor_pending_increments %" PRIu64 "\n"
        "# HELP incrementor_pending_keys Keys with increments not yet written to the database.\n"
        "# TYPE incrementor_pending_keys gauge\n"
        "incrementor_pending_keys %" PRIu64 "\n"
        "# HELP incrementor_flushes_total Batches written to the database, by result.\n"
        "# TYPE incrementor_flushes_total counter\n"
        "incrementor_flushes_total{result=\"ok\"} %" PRIu64 "\n"
        "incrementor_flushes_total{result=\"failed\"} %" PRIu64 "\n"
        "# HELP incrementor_rows_written_total Rows written to the database.\n"
        "# TYPE incrementor_rows_written_total counter\n"
        "incrementor_rows_written_total %" PRIu64 "\n"
        "# HELP incrementor_last_flush_seconds How long the last batch took to write.\n"
        "# TYPE incrementor_last_flush_seconds gauge\n"
        "incrementor_last_flush_seconds %.6f\n"
        "# HELP incrementor_ack_commit_lag_seconds Time from an increment's acknowledgement to its "
        "commit (quantile 1 is the maximum).\n"
        "# TYPE incrementor_ack_commit_lag_seconds summary\n"
        "incrementor_ack_commit_lag_seconds{quantile=\"0.5\"} %.3f\n"
        "incrementor_ack_commit_lag_seconds{quantile=\"0.99\"} %.3f\n"
        "incrementor_ack_commit_lag_seconds{quantile=\"1\"} %.3f\n"
        "incrementor_ack_commit_lag_seconds_count %" PRIu64 "\n"
        "# HELP incrementor_idempotent_replays_total Retries answered from the idempotency table, "
        "not applied again.\n"
        "# TYPE incrementor_idempotent_replays_total counter\n"
        "incrementor_idempotent_replays_total %" PRIu64 "\n"
        "# HELP incrementor_idempotency_keys Idempotency keys remembered now.\n"
        "# TYPE incrementor_idempotency_keys gauge\n"
        "incrementor_idempotency_keys %" PRIu64 "\n"
        "# HELP incrementor_idempotency_evicted_total Idempotency keys forgotten before their "
        "window ended (the bound).\n"
        "# TYPE incrementor_idempotency_evicted_total counter\n"
        "incrementor_idempotency_evicted_total %" PRIu64 "\n",
        sn.accepted + LOAD(svc->deferred_ok), sn.refused, LOAD(svc->rejected_overflow),
        LOAD(svc->failed_reqs), LOAD(svc->idem_conflicts), LOAD(svc->applied), sn.pending_items,
        sn.pending_keys, LOAD(svc->flushes), LOAD(svc->failed_flushes), LOAD(svc->rows_written),
        (double)LOAD(svc->last_flush_us) / 1e6, lag_p50 / 1e3, lag_p99 / 1e3, lag_max / 1e3, lag_n,
        LOAD(svc->idem_replayed), LOAD(svc->idem_keys), LOAD(svc->idem_evicted));
}

int svc_handle(session_t *s, const http_request_t *r, const char *body, size_t len, void *ctx)
{
    svc_t *svc = ctx;
    static const char prefix[] = "/counters/";
    if (path_is(r, "/increment") && svc->consume) {
        respond_error(s, 421, "this is the writer (--consume): POST /increment to a web node");
    } else if (path_is(r, "/increment")) {
        increment(svc, s, r, body, len);
    } else if (svc->queue && method_is(r, "GET") &&
               (path_is(r, "/counters") || (r->path_len >= sizeof prefix - 1 &&
                                            memcmp(r->path, prefix, sizeof prefix - 1) == 0))) {
        respond_error(s, 421,
                      "this is a web node (--queue): reads are served by the writer "
                      "(--consume)");
    } else if (path_is(r, "/stats") || path_is(r, "/counters") ||
               (r->path_len >= sizeof prefix - 1 &&
                memcmp(r->path, prefix, sizeof prefix - 1) == 0)) {
        if (!method_is(r, "GET"))
            respond_error(s, 405, "GET only");
        else if (path_is(r, "/stats"))
            stats(svc, s);
        else if (path_is(r, "/counters"))
            get_page(svc, s, r);
        else
            get_one(svc, s, r->path + sizeof prefix - 1, r->path_len - (sizeof prefix - 1));
    } else {
        respond_error(s, 404, "no such path");
    }
    return 1;
}

/* ---- life cycle ---- */

int svc_init(svc_t *svc, const svc_cfg_t *cfg)
{
    char err[512];
    memset(svc, 0, sizeof *svc);
    svc->cfg = *cfg;
    svc->nthreads = cfg->server.threads;
    int rc = session_canned_init(&svc->ok, 200, JSON, ok_body, sizeof ok_body - 1);
    if (rc < 0) { /* a constant that fits: only a change here can get this */
        fprintf(stderr, "incrementor: the 200 answer is longer than session_canned_t holds\n");
        return rc;
    }
    if (cfg->queue_url) {
        /* A web node: no database, Redis instead (queue.c). */
        if ((rc = queue_init(svc)) < 0)
            return rc;
        goto threads;
    }
    /* The writer acknowledges entries to Redis after its commit: that commit
     * must survive a power loss (synchronous=FULL), whatever --ack says. */
    if (cfg->consume_url)
        svc->cfg.durable = 1;
    /* A single durable process syncs its commits itself, off the writer's
     * path (flush.c); the consumer's commits are durable when they return. */
    rc = db_open_writer(&svc->db, cfg->db_path,
                        !svc->cfg.durable  ? DB_BUFFERED
                        : cfg->consume_url ? DB_DURABLE_FULL
                                           : DB_DURABLE_SYNCED,
                        err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "incrementor: %s\n", err);
        return rc;
    }
    int64_t red = 1, evicted = 0, kept = 0;
    if ((rc = db_red(svc->db, &red)) < 0 || (rc = db_begin(svc->db)) < 0 ||
        (rc = db_idem_trim(svc->db, svc_wall_ms() - cfg->idem_window_ms, cfg->idem_keys, &evicted,
                           &kept)) < 0 ||
        (rc = db_commit(svc->db)) < 0) {
        fprintf(stderr, "incrementor: %s: %s\n", cfg->db_path, db_errmsg(svc->db));
        db_rollback(svc->db);
        return rc;
    }
    /* Keys past the window are gone (up to DB_IDEM_SWEEP of them, the
     * flushes delete the rest); a lower bound than the last run's too. */
    svc->idem_keys = (uint64_t)kept;
    svc->idem_evicted = (uint64_t)evicted;
    if ((rc = db_open_checkpointer(&svc->ckpt, cfg->db_path, err, sizeof err)) < 0) {
        fprintf(stderr, "incrementor: %s\n", err);
        return rc;
    }
    svc->fast_open = !cfg->durable && red == 0;
    if (cfg->consume_url && (rc = consume_init(svc)) < 0)
        return rc;
threads:
    svc->threads = calloc((size_t)svc->nthreads, sizeof *svc->threads);
    if (!svc->threads)
        goto nomem;
    int64_t now = time_update();
    for (int i = 0; i < svc->nthreads; i++) {
        pthread_mutex_init(&svc->threads[i].lock, NULL);
        if (!(svc->threads[i].cur = svc_window_new(svc, now)))
            goto nomem;
    }
    pthread_mutex_init(&svc->wlock, NULL);
    pthread_mutex_init(&svc->slock, NULL);
    pthread_cond_init(&svc->scond, NULL);
    pthread_cond_init(&svc->staken, NULL);
    svc->sync_tail = &svc->sync_q;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&svc->wcond, &ca);
    pthread_cond_init(&svc->ccond, &ca);
    pthread_condattr_destroy(&ca);
    agg_init(&svc->w);

    server_cfg_t *sc = &svc->cfg.server;
    sc->session.ext = svc_handle;
    sc->session.ext_ctx = svc;
    metrics_add_writer(metrics_lines, svc);
    return 0;
nomem:
    fprintf(stderr, "incrementor: out of memory\n");
    return -ENOMEM;
}

int svc_run(svc_t *svc)
{
    /* Durable, single process: the syncer makes commits durable (flush.c);
     * without its thread the writer syncs in line: slower, as exact. */
    svc->sync_running = svc->cfg.durable && !svc->queue && !svc->consume &&
                        pthread_create(&svc->syncer, NULL, svc_syncer_main, svc) == 0;
    void *(*writer)(void *) = svc->queue     ? queue_main
                              : svc->consume ? consume_main
                                             : svc_writer_main;
    if (pthread_create(&svc->writer, NULL, writer, svc) != 0) {
        fprintf(stderr, "incrementor: cannot start the writer thread\n");
        return 1;
    }
    int ckpt =
        svc->ckpt && pthread_create(&svc->checkpointer, NULL, svc_checkpointer_main, svc) == 0;
    int status = reactor_run(&svc->cfg.server, NULL);
    /* The loops are gone: the writer must not post answers any more, and
     * flushes what is left (the loops drained what was in flight). */
    __atomic_store_n(&svc->loops_gone, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&svc->wlock);
    __atomic_store_n(&svc->stop, 1, __ATOMIC_RELEASE); /* also read without the lock */
    pthread_cond_signal(&svc->wcond);
    pthread_cond_signal(&svc->ccond);
    pthread_mutex_unlock(&svc->wlock);
    pthread_join(svc->writer, NULL);
    if (svc->sync_running) { /* after the writer: it queues no more */
        pthread_mutex_lock(&svc->slock);
        svc->sync_stop = 1;
        pthread_cond_signal(&svc->scond);
        pthread_mutex_unlock(&svc->slock);
        pthread_join(svc->syncer, NULL);
    }
    if (ckpt)
        pthread_join(svc->checkpointer, NULL);
    return status ? status : svc->exit_status;
}

void svc_free(svc_t *svc)
{
    for (int i = 0; svc->threads && i < svc->nthreads; i++) {
        svc_window_free_list(svc->threads[i].cur);
        db_close(svc->threads[i].reader);
        pthread_mutex_destroy(&svc->threads[i].lock);
    }
    free(svc->threads);
    svc_window_free_list(svc->spare);
    svc_window_free_list(svc->pending);
    svc_window_free_list(svc->synced);
    agg_free(&svc->w);
    free(svc->rows);
    free(svc->order);
    db_close(svc->db);
    db_close(svc->ckpt);
    queue_free(svc);
    consume_free(svc);
    memset(svc, 0, sizeof *svc);
}
