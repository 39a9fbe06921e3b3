/* Integration tests of bin/incrementor, run as real processes on port 0 with
 * a database in a temporary directory, driven by concurrent clients of this
 * file that remember what was acknowledged:
 *   1. buffered load then SIGTERM: the database equals the acknowledged sums;
 *   2. durable, SIGKILL during load five times on the same database: every
 *      acknowledged increment is there, nothing beyond what was in flight;
 *      and under steady load the WAL stays bounded;
 *   3. a table of bad inputs: each gets its status and changes nothing;
 *   4. two processes on one port and one database: exact;
 *   5. a writer in another PID namespace keeps its int64 headroom, and no
 *      counter ever becomes a REAL;
 *   6. Idempotency-Key: a retry after a SIGKILL, duplicates that arrive
 *      while the first is pending (on one process or two), the window and
 *      the bound on keys kept. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "../lib/tlib.h"
#include "../../incrementor/db.h"

#define NKEYS   50
#define STOP_MS 15000
#define RESP_MS 10000

static char dir[256];

/* ---- the database ---- */

/* Read counters k0..k<NKEYS-1> into v (0 when absent). Returns the number of
 * rows in the table, or -1. */
static int db_read(const char *path, int64_t v[NKEYS])
{
    return tincr_db_read(path, v, NKEYS);
}

static const char *db_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s.db", dir, name);
    return p;
}

static pid_t start(const char *db, const char *port, const char *ack, const char *flush,
                   const char *threads, int *got_port)
{
    const char *argv[] = {tproc_bin("incrementor"),
                          "--db",
                          db,
                          "--port",
                          port,
                          "--ack",
                          ack,
                          "--flush-ms",
                          flush,
                          "--threads",
                          threads,
                          NULL};
    return tproc_start(argv, got_port);
}

/* ---- the clients (tests/lib/tincr.c) ---- */

static void load_start(tincr_load_t *l, int port, int positive, unsigned seed)
{
    assert_int_equal(tincr_start(l, &port, 1, NKEYS, positive, seed), 0);
}

/* GET path; the body into body[cap]. Returns the status or a negative errno. */
static int get(int port, const char *path, char *body, size_t cap)
{
    char req[512];
    thttp_resp_t r = {0};
    int fd = tconn_open(port);
    if (fd < 0)
        return fd;
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    int rc = thttp_do(fd, req, &r, RESP_MS);
    close(fd);
    snprintf(body, cap, "%s", rc == 0 && r.body ? r.body : "");
    thttp_free(&r);
    return rc < 0 ? rc : r.status;
}

static void check_exact(const char *db, const int64_t acked[NKEYS])
{
    int64_t got[NKEYS];
    assert_true(db_read(db, got) >= 0);
    int bad = 0;
    for (int k = 0; k < NKEYS; k++)
        if (got[k] != acked[k]) {
            fprintf(stderr, "k%d: database %lld, acknowledged %lld\n", k, (long long)got[k],
                    (long long)acked[k]);
            bad++;
        }
    assert_int_equal(bad, 0);
}

/* ---- 1. buffered: load, SIGTERM, exact ---- */

static void test_sigterm_exact(void **state)
{
    (void)state;
    const char *db = db_path("sigterm");
    int port;
    /* A long flush interval: SIGTERM finds acknowledged sums still in memory. */
    pid_t pid = start(db, "0", "buffered", "500", "2", &port);
    assert_true(pid > 0);
    tincr_load_t l;
    int64_t acked[NKEYS] = {0};
    load_start(&l, port, 0, 1);
    usleep(3000 * 1000);
    long ok = tincr_stop(&l, acked, NULL);
    assert_true(ok > 100);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    check_exact(db, acked);
}

/* ---- 1b. buffered: SIGTERM in the middle of the load ---- */

static void test_sigterm_during_load(void **state)
{
    (void)state;
    const char *db = db_path("sigterm2");
    int port;
    pid_t pid = start(db, "0", "buffered", "200", "2", &port);
    assert_true(pid > 0);
    tincr_load_t l;
    int64_t acked[NKEYS] = {0}, inflight[NKEYS] = {0}, got[NKEYS];
    load_start(&l, port, 1, 2);
    usleep(1500 * 1000);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0); /* the clients still send */
    tincr_stop(&l, acked, inflight);
    assert_true(db_read(db, got) >= 0);
    for (int k = 0; k < NKEYS; k++) {
        if (got[k] < acked[k] || got[k] > acked[k] + inflight[k])
            fail_msg("k%d: database %lld, acknowledged %lld, in flight %lld", k, (long long)got[k],
                     (long long)acked[k], (long long)inflight[k]);
    }
}

/* ---- 2. durable: SIGKILL five times ---- */

static void test_durable_sigkill(void **state)
{
    (void)state;
    const char *db = db_path("sigkill");
    int64_t acked[NKEYS] = {0}, inflight[NKEYS] = {0}, got[NKEYS];
    long total = 0;
    for (int round = 0; round < 5; round++) {
        int port;
        pid_t pid = start(db, "0", "durable", "20", "2", &port);
        assert_true(pid > 0);
        tincr_load_t l;
        load_start(&l, port, 1, 10 + (unsigned)round);
        usleep((800 + 150 * (useconds_t)round) * 1000);
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(tproc_stop(pid, STOP_MS), 128 + SIGKILL);
        total += tincr_stop(&l, acked, inflight);
        assert_true(db_read(db, got) >= 0);
        for (int k = 0; k < NKEYS; k++)
            if (got[k] < acked[k] || got[k] > acked[k] + inflight[k])
                fail_msg("round %d k%d: database %lld, acknowledged %lld, in flight %lld", round, k,
                         (long long)got[k], (long long)acked[k], (long long)inflight[k]);
    }
    assert_true(total > 100);
}

/* ---- 2b. durable under steady load: the WAL stays bounded ---- */

#define WAL_FRAME (4096 + 24) /* a frame of SQLite's default page size, with its header */

static long flushes_of(const char *stats)
{
    const char *p = strstr(stats, "\"flushes\":");
    return p ? strtol(p + 10, NULL, 10) : -1;
}

/* A durable writer commits back to back, every commit at least one WAL
 * frame. The WAL must be started over once it is long, however busy the
 * writer: this one grew without bound (the checkpointer's connection had
 * never read the database, and its checkpoints did nothing). Run until
 * three times DB_WAL_RESTART commits, then the WAL file (which keeps its
 * largest size) must be under twice DB_WAL_RESTART frames; and exact. */
static void test_durable_wal_bounded(void **state)
{
    (void)state;
    const char *db = db_path("wal");
    char wal[600], stats[4096];
    snprintf(wal, sizeof wal, "%s-wal", db);
    int port;
    pid_t pid = start(db, "0", "durable", "20", "2", &port);
    assert_true(pid > 0);
    tincr_load_t l;
    int64_t acked[NKEYS] = {0};
    load_start(&l, port, 0, 7);
    long flushes = 0;
    off_t most = 0;
    for (int i = 0; i < 400 && flushes < 3 * DB_WAL_RESTART; i++) { /* 20 s at most */
        usleep(50 * 1000);
        assert_int_equal(get(port, "/stats", stats, sizeof stats), 200);
        flushes = flushes_of(stats);
        struct stat st;
        if (stat(wal, &st) == 0 && st.st_size > most)
            most = st.st_size;
    }
    assert_true(tincr_stop(&l, acked, NULL) > 100);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    if (flushes < 3 * DB_WAL_RESTART) { /* a slow disk: a bound can't be told from no bound */
        fprintf(stderr, "only %ld commits in 20 s: too few to tell, skipped\n", flushes);
        skip();
    }
    if (most > 2 * DB_WAL_RESTART * WAL_FRAME)
        fail_msg("the WAL reached %lld bytes after %ld commits", (long long)most, flushes);
    check_exact(db, acked);
}

/* ---- 3. bad inputs ---- */

struct bad_case {
    const char *name;
    const char *ctype; /* POST /increment with this Content-Type (NULL: none) and body */
    const char *body;
    const char *raw; /* or this whole request */
    int status;
    const char *extra; /* header lines added to a POST built from ctype and body */
};

#define IK(k) "Idempotency-Key: " k "\r\n"
#define X16   "xxxxxxxxxxxxxxxx"
#define X256  X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16

#define FORM "application/x-www-form-urlencoded"
#define JS   "application/json"

static const struct bad_case bad_cases[] = {
    {"missing key", FORM, "value=1", NULL, 400, NULL},
    {"missing value", FORM, "key=kx", NULL, 400, NULL},
    {"not an integer", FORM, "key=kx&value=1x", NULL, 400, NULL},
    {"float", FORM, "key=kx&value=1.5", NULL, 400, NULL},
    {"out of range", FORM, "key=kx&value=9223372036854775808", NULL, 400, NULL},
    {"bad encoding", FORM, "key=%zz&value=1", NULL, 400, NULL},
    {"empty key", FORM, "key=&value=1", NULL, 400, NULL},
    {"control character", FORM, "key=%01&value=1", NULL, 400, NULL},
    {"invalid UTF-8", FORM, "key=%ff&value=1", NULL, 400, NULL},
    {"key too long", FORM,
     "value=1&key=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
     NULL, 400, NULL},
    {"json non-integer", JS, "{\"base\": 1, \"kx\": 1.5}", NULL, 400, NULL},
    {"json bad key", JS, "{\"base\": 1, \"\": 2}", NULL, 400, NULL},
    {"json empty", JS, "{}", NULL, 400, NULL},
    {"json not an object", JS, "[1,2]", NULL, 400, NULL},
    {"json duplicate", JS, "{\"kx\": 1, \"kx\": 2}", NULL, 400, NULL},
    {"json malformed", JS, "{\"base\": ", NULL, 400, NULL},
    {"json out of range", JS, "{\"base\": 9223372036854775808}", NULL, 400, NULL},
    {"text/plain", "text/plain", "key=kx&value=1", NULL, 415, NULL},
    {"no content type", NULL, "key=kx&value=1", NULL, 415, NULL},
    {"too large", NULL, NULL,
     "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     "Content-Length: 5000000\r\n\r\n{",
     413, NULL},
    {"GET /increment", NULL, NULL, "GET /increment?key=kx&value=1 HTTP/1.1\r\nHost: t\r\n\r\n", 405,
     NULL},
    {"DELETE counter", NULL, NULL, "DELETE /counters/base HTTP/1.1\r\nHost: t\r\n\r\n", 405, NULL},
    {"POST /stats", NULL, NULL, "POST /stats HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 405,
     NULL},
    {"unknown path", NULL, NULL, "GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n", 404, NULL},
    {"absent counter", NULL, NULL, "GET /counters/absent HTTP/1.1\r\nHost: t\r\n\r\n", 404, NULL},
    {"overflow up", FORM, "key=near&value=2", NULL, 422, NULL},
    {"overflow down", FORM, "key=low&value=-2", NULL, 422, NULL},
    {"overflow in a batch", JS, "{\"base\": 1, \"near\": 5}", NULL, 422, NULL},
    /* 5 + INT64_MIN fits: the control case, then the same again does not. */
    {"to the minimum", FORM, "key=base&value=-9223372036854775808", NULL, 200, NULL},
    {"overflow back", FORM, "key=base&value=-9223372036854775808", NULL, 422, NULL},
    {"overflow of a new key", JS, "{\"new\": 1, \"base\": -9223372036854775808}", NULL, 422, NULL},
    {"empty Idempotency-Key", FORM, "key=kx&value=1", NULL, 400, IK("")},
    {"Idempotency-Key too long", FORM, "key=kx&value=1", NULL, 400, IK(X256)},
    {"Idempotency-Key with a space", FORM, "key=kx&value=1", NULL, 400, IK("a b")},
    {"Idempotency-Key with a tab", FORM, "key=kx&value=1", NULL, 400, IK("a\tb")},
    {"Idempotency-Key not ASCII", FORM, "key=kx&value=1", NULL, 400, IK("caf\xc3\xa9")},
    {"Idempotency-Key twice", FORM, "key=kx&value=1", NULL, 400, IK("a") IK("b")},
    {"Idempotency-Key, first use", FORM, "key=base&value=0", NULL, 200, IK("t-1")},
    {"Idempotency-Key, another request", FORM, "key=base&value=1", NULL, 422, IK("t-1")},
    {"Idempotency-Key, another batch", JS, "{\"base\": 0, \"kx\": 1}", NULL, 422, IK("t-1")},
    {"Idempotency-Key, 255 bytes", FORM, "key=base&value=0", NULL, 200,
     IK(X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 X16 "xxxxxxxxxxxxxxx")},
};

static void check_bad_inputs(const char *ack)
{
    const char *db = db_path(ack);
    char sql[256];
    snprintf(sql, sizeof sql,
             "CREATE TABLE counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
             "INSERT INTO counters VALUES('base', 5), ('near', 9223372036854775806),"
             "('low', -9223372036854775807);");
    assert_int_equal(tincr_db_exec(db, sql), 0);
    int port;
    pid_t pid = start(db, "0", ack, "20", "2", &port);
    assert_true(pid > 0);
    int failures = 0;
    char req[2048];
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *c = &bad_cases[i];
        int fd = tconn_open(port);
        assert_true(fd >= 0);
        thttp_resp_t r = {0};
        if (c->raw)
            snprintf(req, sizeof req, "%s", c->raw);
        else
            snprintf(req, sizeof req,
                     "POST /increment HTTP/1.1\r\nHost: t\r\n%s%s%s%s"
                     "Content-Length: %zu\r\n\r\n%s",
                     c->ctype ? "Content-Type: " : "", c->ctype ? c->ctype : "",
                     c->ctype ? "\r\n" : "", c->extra ? c->extra : "", strlen(c->body), c->body);
        int rc = thttp_do(fd, req, &r, RESP_MS);
        if (rc != 0 || r.status != c->status ||
            (c->status != 200 && (!r.body || !strstr(r.body, "\"error\"")))) {
            fprintf(stderr, "%s (%s): rc %d status %d, want %d; body %s\n", c->name, ack, rc,
                    r.status, c->status, r.body ? r.body : "");
            failures++;
        }
        thttp_free(&r);
        close(fd);
    }
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    assert_int_equal(failures, 0);
    /* Nothing changed but the control case. */
    char all[256];
    assert_int_equal(tincr_db_text(db,
                                   "SELECT group_concat(key || '=' || value, ',') FROM"
                                   " (SELECT * FROM counters ORDER BY key)",
                                   all, sizeof all),
                     0);
    assert_string_equal(all, "base=-9223372036854775803,low=-9223372036854775807,"
                             "near=9223372036854775806");
}

static void test_bad_inputs_buffered(void **state)
{
    (void)state;
    check_bad_inputs("buffered");
}

static void test_bad_inputs_durable(void **state)
{
    (void)state;
    check_bad_inputs("durable");
}

/* ---- reading back ---- */

static void test_read_back(void **state)
{
    (void)state;
    const char *db = db_path("read");
    int port;
    pid_t pid = start(db, "0", "durable", "10", "1", &port);
    assert_true(pid > 0);
    int fd = tconn_open(port);
    assert_true(fd >= 0);
    thttp_resp_t r = {0};
    assert_int_equal(
        thttp_do(fd,
                 "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 "Content-Length: 27\r\n\r\n{\"b\": 2, \"a\": 1, \"c d\": -3}",
                 &r, RESP_MS),
        0);
    assert_int_equal(r.status, 200);
    thttp_free(&r);
    /* Durable: answered after the commit, so readable at once. */
    assert_int_equal(thttp_do(fd, "GET /counters/c%20d HTTP/1.1\r\nHost: t\r\n\r\n", &r, RESP_MS),
                     0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"key\":\"c d\",\"value\":-3}\n");
    thttp_free(&r);
    assert_int_equal(thttp_do(fd, "GET /counters?limit=2 HTTP/1.1\r\nHost: t\r\n\r\n", &r, RESP_MS),
                     0);
    assert_string_equal(r.body, "{\"counters\":[{\"key\":\"a\",\"value\":1},{\"key\":\"b\","
                                "\"value\":2}],\"next\":\"b\"}");
    thttp_free(&r);
    assert_int_equal(thttp_do(fd, "GET /counters?after=b HTTP/1.1\r\nHost: t\r\n\r\n", &r, RESP_MS),
                     0);
    assert_string_equal(r.body, "{\"counters\":[{\"key\":\"c d\",\"value\":-3}],\"next\":null}");
    thttp_free(&r);
    assert_int_equal(thttp_do(fd, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n", &r, RESP_MS), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"applied\":3"));
    assert_non_null(strstr(r.body, "\"rows_written\":3")); /* one row per key written */
    assert_non_null(strstr(r.body, "\"p99\""));
    thttp_free(&r);
    assert_int_equal(thttp_do(fd, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", &r, RESP_MS), 0);
    assert_non_null(strstr(r.body, "incrementor_applied_total 3"));
    thttp_free(&r);
    assert_int_equal(thttp_do(fd, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &r, RESP_MS), 0);
    assert_int_equal(r.status, 200);
    thttp_free(&r);
    close(fd);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
}

/* ---- durable: no answer before its commit is durable ---- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Is there a WAL sync in the log of preload.c that started at or after
 * `from` and ended at or before `to`? */
static int sync_within(const char *log, int64_t from, int64_t to)
{
    FILE *f = fopen(log, "r");
    long long a, b;
    int found = 0;
    while (f && fscanf(f, "%lld %lld", &a, &b) == 2)
        found |= a >= from && b <= to;
    if (f)
        fclose(f);
    return found;
}

/* Lines in a file (0 if there is none). */
static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, c;
    while (f && (c = fgetc(f)) != EOF)
        n += c == '\n';
    if (f)
        fclose(f);
    return n;
}

/* A durable incrementor (flush 10 ms, one thread) on database `name`, with
 * tests/integration/preload.c preloaded: WAL syncs slow_ms slower and
 * logged in DIR/NAME-sync.log, epoll_ctl MODs in DIR/NAME-ctl.log (paths
 * in sync_log and ctl_log, 512 bytes each); and a connection to it in *fd.
 * Skips if the library is not built. */
static pid_t start_preloaded(const char *name, const char *slow_ms, char *sync_log, char *ctl_log,
                             int *fd)
{
    int port;
    char lib[PATH_MAX], asan[512];
    if (!realpath(tproc_bin("tests/preload.so"), lib))
        skip();
    snprintf(sync_log, 512, "%s/%s-sync.log", dir, name);
    snprintf(ctl_log, 512, "%s/%s-ctl.log", dir, name);
    const char *old_asan = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "%s%sverify_asan_link_order=0", old_asan ? old_asan : "",
             old_asan ? ":" : "");
    char *saved_asan = old_asan ? strdup(old_asan) : NULL;
    setenv("LD_PRELOAD", lib, 1);
    setenv("ASAN_OPTIONS", asan, 1);
    setenv("SLOW_SYNC_LOG", sync_log, 1);
    setenv("SLOW_SYNC_MS", slow_ms, 1);
    setenv("EPOLL_CTL_LOG", ctl_log, 1);
    pid_t pid = start(db_path(name), "0", "durable", "10", "1", &port);
    unsetenv("LD_PRELOAD");
    unsetenv("SLOW_SYNC_LOG");
    unsetenv("SLOW_SYNC_MS");
    unsetenv("EPOLL_CTL_LOG");
    if (saved_asan)
        setenv("ASAN_OPTIONS", saved_asan, 1);
    else
        unsetenv("ASAN_OPTIONS");
    free(saved_asan);
    assert_true(pid > 0);
    assert_true((*fd = tconn_open(port)) >= 0);
    return pid;
}

static const char post_k0[] = "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: "
                              "application/x-www-form-urlencoded\r\n"
                              "Content-Length: 14\r\n\r\nkey=k0&value=1";

#define SLOW_SYNC_MS 250

/* Every WAL sync made SLOW_SYNC_MS slower (tests/integration/preload.c):
 * each durable POST must come back no sooner, after a sync that began once
 * it was sent: the one that made its commit durable. An answer sent at the
 * commit, before the sync (what a pipelined group commit risks), comes
 * back early and fails this. */
static void test_durable_answer_after_sync(void **state)
{
    (void)state;
    char log[512], ctl[512];
    int fd;
    pid_t pid = start_preloaded("slow-sync", "250", log, ctl, &fd);
    for (int i = 0; i < 3; i++) {
        thttp_resp_t r = {0};
        int64_t t0 = mono_ns();
        assert_int_equal(thttp_do(fd, post_k0, &r, RESP_MS), 0);
        int64_t t1 = mono_ns();
        assert_int_equal(r.status, 200);
        thttp_free(&r);
        assert_true(t1 - t0 >= (int64_t)SLOW_SYNC_MS * 1000000);
        assert_true(sync_within(log, t0, t1));
    }
    close(fd);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    int64_t got[NKEYS];
    assert_true(db_read(db_path("slow-sync"), got) >= 0);
    assert_int_equal(got[0], 3);
}

/* A connection waiting for its durable answer stays armed for input, so a
 * request costs no epoll_ctl (core/reactor.c: disarming and re-arming it
 * cost two per request). And input that comes while the answer waits (the
 * second request, sent during the first one's slow sync) is still answered,
 * after the first, and applied once. */
static void test_waiting_connection_not_rearmed(void **state)
{
    (void)state;
    enum { SEQ = 40 };
    char log[512], ctl[512];
    int fd;
    pid_t pid = start_preloaded("armed", "0", log, ctl, &fd);
    for (int i = 0; i < SEQ; i++) {
        thttp_resp_t r = {0};
        assert_int_equal(thttp_do(fd, post_k0, &r, RESP_MS), 0);
        assert_int_equal(r.status, 200);
        thttp_free(&r);
    }
    int mods = count_lines(ctl);
    print_message("epoll_ctl MODs for %d sequential durable POSTs: %d\n", SEQ, mods);
    assert_true(mods < 4);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);

    /* Input while the answer waits: the first POST's sync takes 500 ms. */
    close(fd);
    pid = start_preloaded("armed2", "500", log, ctl, &fd);
    assert_int_equal(tconn_sends(fd, post_k0), 0);
    usleep(100 * 1000);
    assert_int_equal(tconn_sends(fd, post_k0), 0);
    for (int i = 0; i < 2; i++) {
        thttp_resp_t r = {0};
        assert_int_equal(thttp_read(fd, &r, 0, RESP_MS), 0);
        assert_int_equal(r.status, 200);
        thttp_free(&r);
    }
    assert_true(count_lines(ctl) >= 1); /* the input while held disarmed it */
    close(fd);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    int64_t got[NKEYS];
    assert_true(db_read(db_path("armed2"), got) >= 0);
    assert_int_equal(got[0], 2);
}

/* A durable POST waits for its commit behind answers still queued in the
 * session, and the client resets the connection: the session must wait for
 * the writer's answer (it was freed at once, and the answer went to freed
 * memory or to whichever connection took its place). */
static void test_reset_while_commit_waits(void **state)
{
    (void)state;
    enum { PIPELINED = 3000, ROUNDS = 3 };
    static const char get[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    static const char post[] = "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: "
                               "application/json\r\nContent-Length: 12\r\n\r\n{\"reset\": 5}";
    const char *db = db_path("reset");
    int port;
    pid_t pid = start(db, "0", "durable", "300", "1", &port);
    assert_true(pid > 0);
    size_t len;
    char *req = tconn_batch(get, PIPELINED, post, &len);
    for (int round = 0; round < ROUNDS; round++) {
        /* The commit waits while another connection holds the database. */
        sqlite3 *h;
        assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
        assert_int_equal(sqlite3_exec(h, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
        int fd = tconn_open_narrow(port); /* about 100 KB of answers stay queued */
        assert_true(fd >= 0);
        assert_int_equal(tconn_send(fd, req, len), 0);
        usleep(200 * 1000); /* the POST is taken and waits for its commit */
        tconn_reset(fd);
        usleep(200 * 1000);
        assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(h);
        usleep(500 * 1000); /* the commit answers a connection that is gone */
    }
    free(req);
    int fd = tconn_open(port);
    assert_true(fd >= 0);
    thttp_resp_t r = {0};
    assert_int_equal(thttp_do(fd, "GET /counters/reset HTTP/1.1\r\nHost: t\r\n\r\n", &r, RESP_MS),
                     0);
    /* Taken before the reset, so applied, once per round. */
    assert_string_equal(r.body, "{\"key\":\"reset\",\"value\":15}\n");
    thttp_free(&r);
    close(fd);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
}

/* ---- a file that is not a database; bad flags ---- */

/* The exit status of argv run to its end (10 s at most), stderr dropped. */
static int run_exit(const char *const argv[])
{
    return tproc_run(argv, 10000, NULL, 0);
}

static void test_startup_errors(void **state)
{
    (void)state;
    const char *db = db_path("garbage");
    FILE *f = fopen(db, "w");
    assert_non_null(f);
    for (int i = 0; i < 512; i++)
        fputs("this is not a database ", f);
    fclose(f);
    const char *bin = tproc_bin("incrementor");
    const char *a1[] = {bin, "--db", db, "--port", "0", NULL};
    assert_int_equal(run_exit(a1), 1);
    const char *a2[] = {bin, "--ack", "sometimes", NULL};
    assert_int_equal(run_exit(a2), 2);
    const char *a3[] = {bin, "--flush-ms", "0", NULL};
    assert_int_equal(run_exit(a3), 2);
    const char *a4[] = {bin, "--bogus", NULL};
    assert_int_equal(run_exit(a4), 2);
    const char *a5[] = {bin, "--db", "/nonexistent-dir/x.db", "--port", "0", NULL};
    assert_int_equal(run_exit(a5), 1);
}

/* ---- 4. two processes, one port, one database ---- */

static void test_two_processes(void **state)
{
    (void)state;
    const char *db = db_path("two");
    int port, port2;
    pid_t a = start(db, "0", "buffered", "30", "1", &port);
    assert_true(a > 0);
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    pid_t b = start(db, p, "buffered", "30", "1", &port2);
    assert_true(b > 0);
    assert_int_equal(port2, port);
    tincr_load_t l;
    int64_t acked[NKEYS] = {0};
    load_start(&l, port, 0, 3);
    usleep(3000 * 1000);
    long ok = tincr_stop(&l, acked, NULL);
    assert_true(ok > 100);
    assert_int_equal(tproc_stop(a, STOP_MS), 0);
    assert_int_equal(tproc_stop(b, STOP_MS), 0);
    check_exact(db, acked);
}

/* ---- one request ---- */

/* POST /increment with `ctype` and `payload`, plus the header lines `extra`
 * ("" for none, else each ending in CRLF), on a new connection. Returns the
 * status (or a negative errno) and copies the body into body[cap]. */
static int post(int port, const char *extra, const char *ctype, const char *payload, char *body,
                size_t cap)
{
    char req[2048];
    thttp_resp_t r = {0};
    int fd = tconn_open(port);
    if (fd < 0)
        return fd;
    snprintf(req, sizeof req,
             "POST /increment HTTP/1.1\r\nHost: t\r\n%sContent-Type: %s\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             extra, ctype, strlen(payload), payload);
    int rc = thttp_do(fd, req, &r, RESP_MS);
    close(fd);
    if (body && cap)
        snprintf(body, cap, "%s", rc == 0 && r.body ? r.body : "");
    thttp_free(&r);
    return rc < 0 ? rc : r.status;
}

/* The value of one counter and its SQLite type ("integer", "real"; "absent"). */
static int64_t db_counter(const char *path, const char *key, char *type, size_t cap)
{
    sqlite3 *h;
    sqlite3_stmt *st;
    int64_t v = 0;
    snprintf(type, cap, "absent");
    assert_int_equal(sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(h, 5000);
    assert_int_equal(sqlite3_prepare_v2(h,
                                        "SELECT value, typeof(value) FROM counters"
                                        " WHERE key = ?1",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
        snprintf(type, cap, "%s", (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

/* ---- 5. a writer in another PID namespace ---- */

#define UNSHARE "/usr/bin/unshare"

/* Can this process make PID namespaces? (root, and not denied by a
 * container). Prints why not. */
static int can_unshare_pid(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "skipped: needs root to run a writer in another PID namespace "
                        "(unshare --pid)\n");
        return 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        execl(UNSHARE, UNSHARE, "--pid", "--fork", "--kill-child", "--mount-proc", "/bin/true",
              (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "skipped: %s --pid --fork --mount-proc does not work here\n", UNSHARE);
        return 0;
    }
    return 1;
}

/* A PID that no process of this namespace has now. */
static pid_t unused_pid(void)
{
    for (pid_t p = 10000 + getpid() % 10000; p < 30000; p++)
        if (kill(p, 0) < 0 && errno == ESRCH)
            return p;
    return -1;
}

/* Two buffered incrementors on one database file, A in a PID namespace of
 * its own (as two containers would run them) with a PID that does not exist
 * in B's namespace. A acknowledges 2^40 on counter k and holds it for its
 * --flush-ms; B is then asked to take k close to INT64_MAX. B must leave A's
 * headroom (2^51: what one buffered process may hold unwritten, see flush.c):
 * an increment to within 2^40 of the limit is refused, one to exactly
 * INT64_MAX - 2^51 is taken; when A writes its 2^40 the counter is an exact
 * integer. Counting A as dead (a PID probe from B's namespace) makes B take
 * the first one, and A's write then overflows into a REAL. */
static void test_writer_in_other_pid_namespace(void **state)
{
    (void)state;
    if (!can_unshare_pid())
        skip();
    const char *db = db_path("pidns");
    char dbp[512], last[16], body[512], type[16];
    snprintf(dbp, sizeof dbp, "%s", db);
    pid_t inner = unused_pid();
    assert_true(inner > 0);
    snprintf(last, sizeof last, "%d", (int)inner - 1);
    /* As a container: its own PID namespace and /proc. sh is the namespace's
     * init: it sets the namespace's next PID, then runs the incrementor as
     * its child (so with PID `inner`) and waits for it. */
    const char *argv[] = {UNSHARE,
                          "--pid",
                          "--fork",
                          "--kill-child",
                          "--mount-proc",
                          "/bin/sh",
                          "-c",
                          "echo \"$1\" > /proc/sys/kernel/ns_last_pid || exit 99; shift; "
                          "\"$@\" & wait $!",
                          "sh",
                          last,
                          tproc_bin("incrementor"),
                          "--db",
                          dbp,
                          "--port",
                          "0",
                          "--ack",
                          "buffered",
                          "--flush-ms",
                          "60000",
                          "--threads",
                          "1",
                          NULL};
    int pa, pb;
    pid_t a = tproc_start(argv, &pa);
    assert_true(a > 0);
    assert_int_equal(post(pa, "", FORM, "key=k&value=1099511627776", body, sizeof body), 200);
    pid_t b = start(dbp, "0", "buffered", "20", "1", &pb);
    assert_true(b > 0);
    if (kill(inner, 0) == 0)
        fprintf(stderr, "note: PID %d now exists here too; the test still holds\n", (int)inner);
    /* INT64_MAX - 2^40 + 1, then INT64_MAX - 2^51. */
    int near = post(pb, "", FORM, "key=k&value=9223370937343148032", body, sizeof body);
    int edge = post(pb, "", FORM, "key=k&value=9221120237041090559", body, sizeof body);
    /* A writes its 2^40 on SIGTERM (sent to its group: unshare and the
     * namespace's init ignore it, the incrementor flushes and exits 0). */
    kill(-a, SIGTERM);
    int a_status = tproc_stop(a, STOP_MS);
    int64_t v = db_counter(dbp, "k", type, sizeof type);
    fprintf(stderr, "B answered %d then %d; A exited %d; k = %lld (%s)\n", near, edge, a_status,
            (long long)v, type);
    assert_int_equal(near, 422);
    assert_int_equal(edge, 200);
    assert_int_equal(a_status, 0);
    assert_string_equal(type, "integer");
    assert_true(v == INT64_C(9221121336552718335)); /* INT64_MAX - 2^51 + 2^40 */
    assert_int_equal(tproc_stop(b, STOP_MS), 0);
}

/* ---- 6. Idempotency-Key ---- */

static int64_t counter(const char *db, const char *key)
{
    char type[16];
    int64_t v = db_counter(db, key, type, sizeof type);
    assert_true(strcmp(type, "integer") == 0 || strcmp(type, "absent") == 0);
    return v;
}

static pid_t start_idem(const char *db, const char *ack, const char *window, const char *keys,
                        int *port)
{
    const char *argv[] = {tproc_bin("incrementor"),
                          "--db",
                          db,
                          "--port",
                          "0",
                          "--ack",
                          ack,
                          "--flush-ms",
                          "50",
                          "--threads",
                          "2",
                          "--idempotency-window",
                          window,
                          "--idempotency-keys",
                          keys,
                          NULL};
    return tproc_start(argv, port);
}

/* A client that got no answer retries with the same key: here the answers
 * did come, then the process was killed (SIGKILL, as a crash between the
 * commit and the answer would leave things) and restarted on the same
 * database. The retries are answered as the first requests were, 200 and
 * 422 alike, and apply nothing; the same key with another request is
 * refused; the keys survive in the database. */
static void check_idempotent_restart(const char *ack)
{
    char db[512], first[256], second[256], again[256], body[1024];
    snprintf(db, sizeof db, "%s", db_path(ack[0] == 'd' ? "idem-durable" : "idem-buffered"));
    int port;
    pid_t pid = start_idem(db, ack, "86400", "1000", &port);
    assert_true(pid > 0);
    assert_int_equal(post(port, IK("order-1"), FORM, "key=paid&value=5", first, sizeof first), 200);
    assert_int_equal(post(port, "", FORM, "key=big&value=9223372036854775807", body, sizeof body),
                     200);
    assert_int_equal(
        post(port, IK("order-2"), JS, "{\"big\": 1, \"paid\": 1}", second, sizeof second), 422);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(tproc_stop(pid, STOP_MS), 128 + SIGKILL);

    pid = start_idem(db, ack, "86400", "1000", &port);
    assert_true(pid > 0);
    assert_int_equal(post(port, IK("order-1"), FORM, "key=paid&value=5", again, sizeof again), 200);
    assert_string_equal(again, first);
    /* The same increment as JSON is the same request. */
    assert_int_equal(post(port, IK("order-1"), JS, "{\"paid\": 5}", again, sizeof again), 200);
    assert_string_equal(again, first);
    assert_int_equal(
        post(port, IK("order-2"), JS, "{\"paid\": 1, \"big\": 1}", again, sizeof again), 422);
    assert_string_equal(again, second);
    /* Another request under a key already used: refused, nothing applied. */
    assert_int_equal(post(port, IK("order-1"), FORM, "key=paid&value=6", again, sizeof again), 422);
    assert_non_null(strstr(again, "Idempotency-Key"));
    assert_int_equal(post(port, IK("order-3"), FORM, "key=paid&value=10", again, sizeof again),
                     200);
    assert_int_equal(get(port, "/stats", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"replayed\":3"));
    assert_non_null(strstr(body, "\"conflicts\":1"));
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    assert_true(counter(db, "paid") == 15);
    assert_true(counter(db, "big") == INT64_MAX);
}

static void test_idempotency_restart_durable(void **state)
{
    (void)state;
    check_idempotent_restart("durable");
}

static void test_idempotency_restart_buffered(void **state)
{
    (void)state;
    check_idempotent_restart("buffered");
}

/* Send a POST without reading its answer. Returns the connection. */
static int send_only(int port, const char *extra, const char *payload)
{
    char req[1024];
    int fd = tconn_open(port);
    assert_true(fd >= 0);
    snprintf(req, sizeof req,
             "POST /increment HTTP/1.1\r\nHost: t\r\n%sContent-Type: " FORM "\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             extra, strlen(payload), payload);
    assert_int_equal(tconn_sends(fd, req), 0);
    return fd;
}

static int answer_of(int fd, char *body, size_t cap)
{
    thttp_resp_t r = {0};
    int rc = thttp_read(fd, &r, 0, RESP_MS);
    snprintf(body, cap, "%s", rc == 0 && r.body ? r.body : "");
    thttp_free(&r);
    close(fd);
    return rc < 0 ? rc : r.status;
}

/* Duplicates that arrive while the first is still waiting for its commit:
 * the test holds the database's write lock so that the writer is stuck on
 * a first request (x) while two requests with one key arrive, on two
 * connections, in the same window; then a third after they commit. One
 * increment is applied, all three are answered 200. */
static void check_idempotent_pending(const char *ack)
{
    char db[512], b0[256], b1[256], b2[256], b3[256], body[1024];
    snprintf(db, sizeof db, "%s", db_path(ack[0] == 'd' ? "dup-durable" : "dup-buffered"));
    int port;
    pid_t pid = start_idem(db, ack, "86400", "1000", &port);
    assert_true(pid > 0);
    sqlite3 *h;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_busy_timeout(h, 5000);
    assert_int_equal(sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    long long t0 = tnow_ms();
    int f0 = send_only(port, IK("x-1"), "key=x&value=1");
    usleep(300 * 1000); /* the writer has taken x and waits for the lock */
    int f1 = send_only(port, IK("dup"), "key=d&value=3");
    int f2 = send_only(port, IK("dup"), "key=d&value=3");
    usleep(300 * 1000);
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    /* Well within the writer's busy timeout (5 s): nothing failed. */
    assert_true(tnow_ms() - t0 < 4000);
    assert_int_equal(answer_of(f0, b0, sizeof b0), 200);
    assert_int_equal(answer_of(f1, b1, sizeof b1), 200);
    assert_int_equal(answer_of(f2, b2, sizeof b2), 200);
    assert_int_equal(post(port, IK("dup"), FORM, "key=d&value=3", b3, sizeof b3), 200);
    assert_string_equal(b1, b0);
    assert_string_equal(b2, b0);
    assert_string_equal(b3, b0);
    assert_int_equal(get(port, "/stats", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"replayed\":2"));
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    assert_true(counter(db, "d") == 3);
    assert_true(counter(db, "x") == 1);
}

static void test_idempotency_pending_durable(void **state)
{
    (void)state;
    check_idempotent_pending("durable");
}

static void test_idempotency_pending_buffered(void **state)
{
    (void)state;
    check_idempotent_pending("buffered");
}

/* The "replayed" count of a /stats body, -1 when absent. */
static long replayed_of(const char *stats)
{
    const char *p = strstr(stats, "\"replayed\":");
    return p ? strtol(p + 11, NULL, 10) : -1;
}

/* Two buffered processes on one database, the same key sent to each at
 * once (while the database is locked, so both wait): one applies it, the
 * other answers from its record. */
static void test_idempotency_two_processes(void **state)
{
    (void)state;
    char db[512], b1[256], b2[256], s1[2048], s2[2048];
    snprintf(db, sizeof db, "%s", db_path("idem-two"));
    int p1, p2;
    pid_t a = start_idem(db, "buffered", "86400", "1000", &p1);
    assert_true(a > 0);
    pid_t b = start_idem(db, "buffered", "86400", "1000", &p2);
    assert_true(b > 0);
    sqlite3 *h;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_busy_timeout(h, 5000);
    assert_int_equal(sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    int f1 = send_only(p1, IK("both"), "key=t&value=7");
    int f2 = send_only(p2, IK("both"), "key=t&value=7");
    usleep(300 * 1000);
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    assert_int_equal(answer_of(f1, b1, sizeof b1), 200);
    assert_int_equal(answer_of(f2, b2, sizeof b2), 200);
    assert_string_equal(b1, b2);
    assert_int_equal(get(p1, "/stats", s1, sizeof s1), 200);
    assert_int_equal(get(p2, "/stats", s2, sizeof s2), 200);
    assert_int_equal(replayed_of(s1) + replayed_of(s2), 1);
    assert_int_equal(tproc_stop(a, STOP_MS), 0);
    assert_int_equal(tproc_stop(b, STOP_MS), 0);
    assert_true(counter(db, "t") == 7);
}

/* A key is remembered for --idempotency-window seconds and among the newest
 * --idempotency-keys keys: past either, the same key is a new request. */
static void test_idempotency_window_and_bound(void **state)
{
    (void)state;
    char db[512], body[1024];
    int port;
    snprintf(db, sizeof db, "%s", db_path("idem-window"));
    pid_t pid = start_idem(db, "durable", "2", "1000", &port);
    assert_true(pid > 0);
    long long t0 = tnow_ms();
    assert_int_equal(post(port, IK("w"), FORM, "key=w&value=1", body, sizeof body), 200);
    assert_int_equal(post(port, IK("w"), FORM, "key=w&value=1", body, sizeof body), 200);
    long long t1 = tnow_ms();
    usleep((useconds_t)(3000 - (t1 - t0 < 3000 ? t1 - t0 : 0)) * 1000);
    assert_int_equal(post(port, IK("w"), FORM, "key=w&value=1", body, sizeof body), 200);
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    if (t1 - t0 < 1500) /* the retry came within the window (not so on a very slow machine) */
        assert_true(counter(db, "w") == 2);
    else
        assert_true(counter(db, "w") >= 2);

    snprintf(db, sizeof db, "%s", db_path("idem-bound"));
    pid = start_idem(db, "durable", "86400", "2", &port);
    assert_true(pid > 0);
    assert_int_equal(post(port, IK("b1"), FORM, "key=b&value=1", body, sizeof body), 200);
    assert_int_equal(post(port, IK("b2"), FORM, "key=b&value=10", body, sizeof body), 200);
    assert_int_equal(post(port, IK("b3"), FORM, "key=b&value=100", body, sizeof body), 200);
    assert_int_equal(post(port, IK("b3"), FORM, "key=b&value=100", body, sizeof body), 200);
    assert_int_equal(post(port, IK("b1"), FORM, "key=b&value=1", body, sizeof body), 200);
    assert_int_equal(get(port, "/stats", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"evicted\":2")); /* b1, then b2 for b1's return */
    assert_non_null(strstr(body, "\"keys\":2"));
    static char metrics[65536];
    assert_int_equal(get(port, "/metrics", metrics, sizeof metrics), 200);
    assert_non_null(strstr(metrics, "incrementor_idempotent_replays_total 1\n"));
    assert_non_null(strstr(metrics, "incrementor_idempotency_evicted_total 2\n"));
    assert_int_equal(tproc_stop(pid, STOP_MS), 0);
    assert_true(counter(db, "b") == 112);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/incrementor.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb, (void)type, (void)ftw;
    return remove(path);
}

static int group_teardown(void **state)
{
    (void)state;
    return nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS) < 0 ? -1 : 0;
}

static int skip_unless_built(void **state)
{
    (void)state;
    if (!tproc_exists("incrementor"))
        skip();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_sigterm_exact, skip_unless_built),
        cmocka_unit_test_setup(test_sigterm_during_load, skip_unless_built),
        cmocka_unit_test_setup(test_durable_sigkill, skip_unless_built),
        cmocka_unit_test_setup(test_durable_wal_bounded, skip_unless_built),
        cmocka_unit_test_setup(test_bad_inputs_buffered, skip_unless_built),
        cmocka_unit_test_setup(test_bad_inputs_durable, skip_unless_built),
        cmocka_unit_test_setup(test_read_back, skip_unless_built),
        cmocka_unit_test_setup(test_durable_answer_after_sync, skip_unless_built),
        cmocka_unit_test_setup(test_waiting_connection_not_rearmed, skip_unless_built),
        cmocka_unit_test_setup(test_reset_while_commit_waits, skip_unless_built),
        cmocka_unit_test_setup(test_startup_errors, skip_unless_built),
        cmocka_unit_test_setup(test_two_processes, skip_unless_built),
        cmocka_unit_test_setup(test_writer_in_other_pid_namespace, skip_unless_built),
        cmocka_unit_test_setup(test_idempotency_restart_durable, skip_unless_built),
        cmocka_unit_test_setup(test_idempotency_restart_buffered, skip_unless_built),
        cmocka_unit_test_setup(test_idempotency_pending_durable, skip_unless_built),
        cmocka_unit_test_setup(test_idempotency_pending_buffered, skip_unless_built),
        cmocka_unit_test_setup(test_idempotency_two_processes, skip_unless_built),
        cmocka_unit_test_setup(test_idempotency_window_and_bound, skip_unless_built),
    };
    /* TEST_FILTER=pattern runs the matching cases only (cmocka's wildcards). */
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
