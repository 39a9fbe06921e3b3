/* Integration tests of the incrementor past one machine: web nodes
 * (--queue), a real Redis (redis-server, started here on a free port in a
 * directory of its own, appendonly yes, appendfsync always, stopped by its
 * PID) and the writer (--consume), all real processes, driven by clients
 * that remember what was acknowledged:
 *   1. durable, two web nodes: SIGKILL rounds of a web node, of the writer
 *      and of Redis (restarted on its AOF): the database equals what was
 *      acknowledged (and what Redis decided), up to requests left without
 *      an answer;
 *   2. buffered, two web nodes, SIGTERM: exact;
 *   3. a writer taking over another's pending entries (XAUTOCLAIM); a slow
 *      writer whose entry was taken over, applied and its record pruned
 *      (applied once); a takeover near a limit, out of order (the heir
 *      claims the earlier entry and applies both in order);
 *   4. bad inputs through both web nodes change nothing, the int64 rule
 *      holds exactly (durable nodes only) and each role refuses the other's
 *      requests; with a buffered node, values beyond 2^61 close its fast
 *      path and results within its headroom (2^51) of a limit are refused;
 *      its fast sums stay exact past 2^53 and in a batch of 2,500 keys;
 *   5. Idempotency-Key across two web nodes, a SIGKILL of one, and a
 *      restart of Redis: applied once; the bound --idempotency-keys holds
 *      in Redis (the oldest keys forgotten, counted);
 *   6. a buffered node cut off from Redis (SIGSTOP) beyond its lease: it
 *      stops acknowledging at once, and its late sums are dropped and
 *      counted, exactly what it says it dropped; the increments it
 *      acknowledged under that lease and still held in its windows are
 *      dropped too, never applied under the next lease (cut off by a gate
 *      while a durable node takes the value to the limit).
 *   7. a durable node holds its answers while Redis would not fsync before
 *      replying (checked again on a new connection), and keeps an id of
 *      its own when Redis loses its data.
 * Skipped, saying why, when redis-server is not installed. */
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <sqlite3.h>

#include "../lib/tlib.h"

#define NKEYS   40
#define STOP_MS 15000
#define RESP_MS 10000
#define REDIS   "/usr/bin/redis-server"

static char dir[256];

/* ---- Redis ---- */

typedef struct redis {
    pid_t pid;
    int port;
    char dir[300], url[64];
} redis_t;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *redis_conn(const redis_t *r)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Start (or restart, on its AOF) the Redis of r; wait until it answers. */
static void redis_start(redis_t *r)
{
    char port[16], log[340];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(log, sizeof log, "%s/redis.log", r->dir);
    pid_t pid = tproc_fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(REDIS, REDIS, "--port", port, "--bind", "127.0.0.1", "--dir", r->dir, "--appendonly",
              "yes", "--appendfsync", "always", "--save", "", "--logfile", log, "--daemonize", "no",
              (char *)NULL);
        _exit(127);
    }
    r->pid = pid;
    for (int i = 0; i < 500; i++) {
        redisContext *c = redis_conn(r);
        redisReply *rep = c ? redisCommand(c, "PING") : NULL;
        int ok = rep && rep->type == REDIS_REPLY_STATUS && !strcmp(rep->str, "PONG");
        freeReplyObject(rep);
        if (c)
            redisFree(c);
        if (ok)
            return;
        tsleep_ms(10);
    }
    fail_msg("redis-server did not answer on port %d (log: %s)", r->port, log);
}

static void redis_new(redis_t *r, const char *name)
{
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s/%s", dir, name);
    assert_int_equal(mkdir(r->dir, 0755), 0);
    r->port = free_port();
    assert_true(r->port > 0);
    snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d", r->port);
    redis_start(r);
}

/* ---- the database ---- */

static const char *db_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s.db", dir, name);
    return p;
}

/* Counters k0..k<NKEYS-1> (0 when absent). Returns 0, or -1. */
static int db_read(const char *path, int64_t v[NKEYS])
{
    return tincr_db_read(path, v, NKEYS) < 0 ? -1 : 0;
}

/* Does the database hold exactly Redis's running values (every counter of
 * both; a counter Redis holds at 0 may be absent: a refused request's undo
 * leaves its key at 0)? Prints the differences when `say`. */
static int same_values(const redis_t *r, const char *db, int say)
{
    redisContext *c = redis_conn(r);
    assert_non_null(c);
    redisReply *rep = redisCommand(c, "HGETALL incrementor:values");
    assert_true(rep && rep->type == REDIS_REPLY_ARRAY);
    sqlite3 *h;
    sqlite3_stmt *st;
    int same = 1, rows = 0;
    size_t nonzero = 0;
    for (size_t i = 0; i + 1 < rep->elements; i += 2)
        nonzero += strcmp(rep->element[i + 1]->str, "0") != 0;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(h, "SELECT key, value FROM counters", -1, &st, NULL) != SQLITE_OK) {
        sqlite3_close(h);
        same = 0; /* not created yet */
        goto out;
    }
    sqlite3_busy_timeout(h, 5000);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        char v[32];
        snprintf(v, sizeof v, "%lld", (long long)sqlite3_column_int64(st, 1));
        const char *want = NULL;
        for (size_t i = 0; i + 1 < rep->elements && !want; i += 2)
            if (!strcmp(rep->element[i]->str, k))
                want = rep->element[i + 1]->str;
        if (!want || strcmp(want, v)) {
            if (say)
                fprintf(stderr, "%s: database %s, redis %s\n", k, v, want ? want : "none");
            same = 0;
        }
        rows += strcmp(v, "0") != 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    if ((size_t)rows != nonzero) {
        if (say)
            fprintf(stderr, "%d non-zero counters in the database, %zu in redis\n", rows, nonzero);
        same = 0;
    }
out:
    freeReplyObject(rep);
    redisFree(c);
    return same;
}

/* Wait until the writer has applied everything Redis holds. */
static void wait_drained(const redis_t *r, const char *db)
{
    for (int i = 0; i < 200; i++) {
        if (same_values(r, db, 0))
            return;
        tsleep_ms(50);
    }
    same_values(r, db, 1);
    fail_msg("the writer did not catch up with Redis in 10 s");
}

/* ---- the processes ---- */

static pid_t web(const redis_t *r, const char *ack, int *port)
{
    const char *argv[] = {tproc_bin("incrementor"),
                          "--queue",
                          r->url,
                          "--ack",
                          ack,
                          "--port",
                          "0",
                          "--flush-ms",
                          "20",
                          "--threads",
                          "2",
                          NULL};
    pid_t pid = tproc_start(argv, port);
    assert_true(pid > 0);
    return pid;
}

static pid_t writer(const redis_t *r, const char *db, const char *name, int *port)
{
    const char *argv[] = {tproc_bin("incrementor"),
                          "--consume",
                          r->url,
                          "--db",
                          db,
                          "--port",
                          "0",
                          "--threads",
                          "1",
                          "--consumer",
                          name,
                          "--claim-ms",
                          "300",
                          NULL};
    pid_t pid = tproc_start(argv, port);
    assert_true(pid > 0);
    return pid;
}

/* A writer with --claim-ms claim, stalled (the writer's test hook
 * INCREMENTOR_TEST_STALL="N:MS") for MS ms between reading its N-th
 * non-empty batch and applying it; "" for no stall. */
static pid_t writer_stalled(const redis_t *r, const char *db, const char *name, const char *claim,
                            const char *stall, int *port)
{
    const char *argv[] = {tproc_bin("incrementor"),
                          "--consume",
                          r->url,
                          "--db",
                          db,
                          "--port",
                          "0",
                          "--threads",
                          "1",
                          "--consumer",
                          name,
                          "--claim-ms",
                          claim,
                          NULL};
    assert_int_equal(setenv("INCREMENTOR_TEST_STALL", stall, 1), 0);
    pid_t pid = tproc_start(argv, port);
    unsetenv("INCREMENTOR_TEST_STALL");
    assert_true(pid > 0);
    return pid;
}

static int stats_has(int port, const char *want);

/* How many entries consumer `name` holds pending. */
static long long pending_on(redisContext *c, const char *name)
{
    redisReply *rep = redisCommand(c, "XPENDING incrementor:stream writers - + 1000 %s", name);
    long long n = rep && rep->type == REDIS_REPLY_ARRAY ? (long long)rep->elements : -1;
    freeReplyObject(rep);
    return n;
}

static void sigkill(pid_t pid)
{
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(tproc_wait(pid, STOP_MS), 128 + SIGKILL);
}

/* ---- the clients (tests/lib/tincr.c): values 1..100 ---- */

/* Half of the clients on each of the two ports. */
static void load_start(tincr_load_t *l, int port1, int port2, unsigned seed)
{
    int ports[2] = {port1, port2};
    assert_int_equal(tincr_start(l, ports, 2, NKEYS, 1, seed), 0);
}

/* Every acknowledged increment is in the database, and nothing beyond what
 * was sent without an answer (values are positive: a sum is a bound). */
static void check_bounds(const char *db, const int64_t acked[NKEYS], const int64_t inflight[NKEYS])
{
    int64_t got[NKEYS];
    assert_int_equal(db_read(db, got), 0);
    int bad = 0;
    for (int k = 0; k < NKEYS; k++)
        if (got[k] < acked[k] || got[k] > acked[k] + inflight[k]) {
            fprintf(stderr, "k%d: database %lld, acknowledged %lld, in flight %lld\n", k,
                    (long long)got[k], (long long)acked[k], (long long)inflight[k]);
            bad++;
        }
    assert_int_equal(bad, 0);
}

/* ---- one request ---- */

/* POST body (form unless it starts with '{') with extra header lines to
 * port; returns the status (0 when no answer). */
static int post(int port, const char *body, const char *extra)
{
    char req[2048];
    snprintf(req, sizeof req,
             "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\n%sContent-Length: "
             "%zu\r\n\r\n%s",
             body[0] == '{' ? "application/json" : "application/x-www-form-urlencoded",
             extra ? extra : "", strlen(body), body);
    int fd = tconn_open(port);
    if (fd < 0)
        return 0;
    thttp_resp_t r = {0};
    int rc = thttp_do(fd, req, &r, RESP_MS);
    int status = rc == 0 ? r.status : 0;
    thttp_free(&r);
    close(fd);
    return status;
}

/* GET path from port: the status, and the body into out. */
static int get(int port, const char *path, char *out, size_t len)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    int fd = tconn_must(port);
    thttp_resp_t r = {0};
    int rc = thttp_do(fd, req, &r, RESP_MS);
    int status = rc == 0 ? r.status : 0;
    snprintf(out, len, "%s", rc == 0 && r.body ? r.body : "");
    thttp_free(&r);
    close(fd);
    return status;
}

/* ---- 1. durable: SIGKILL rounds of each component ---- */

static void test_durable_kill_rounds(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "kills");
    const char *db = db_path("kills");
    int p1, p2, pw;
    pid_t w1 = web(&r, "durable", &p1), w2 = web(&r, "durable", &p2);
    pid_t wr = writer(&r, db, "writer", &pw);
    int64_t acked[NKEYS] = {0}, inflight[NKEYS] = {0};
    long total = 0;
    int kills[3] = {0};
    for (int round = 0; round < 6; round++) {
        tincr_load_t l;
        load_start(&l, p1, p2, 10 + (unsigned)round);
        tsleep_ms(400 + 60 * round);
        switch (round % 3) {
        case 0: /* a web node: its clients lose their connection */
            sigkill(w1);
            w1 = web(&r, "durable", &p1);
            break;
        case 1: /* the writer, between reads and commits */
            sigkill(wr);
            wr = writer(&r, db, "writer", &pw);
            break;
        case 2: /* Redis, with requests waiting for its replies */
            sigkill(r.pid);
            tsleep_ms(100);
            redis_start(&r);
            break;
        }
        kills[round % 3]++;
        tsleep_ms(300);
        total += tincr_stop(&l, acked, inflight);
    }
    wait_drained(&r, db);
    check_bounds(db, acked, inflight);
    assert_true(total > 200);
    char body[4096];
    assert_int_equal(get(pw, "/stats", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"consume\":{"));
    assert_int_equal(get(p1, "/stats", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"queue\":{"));
    assert_int_equal(get(p2, "/metrics", body, sizeof body), 200);
    assert_non_null(strstr(body, "incrementor_ack_commit_lag_seconds{quantile=\"0.99\"}"));
    fprintf(stderr, "  %ld acknowledged; kills: web %d, writer %d, redis %d\n", total, kills[0],
            kills[1], kills[2]);
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(w2, STOP_MS), 0);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* ---- 2. buffered: SIGTERM after load, exact ---- */

static void test_buffered_sigterm_exact(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "buffered");
    const char *db = db_path("buffered");
    int p1, p2, pw;
    pid_t w1 = web(&r, "buffered", &p1), w2 = web(&r, "buffered", &p2);
    pid_t wr = writer(&r, db, "writer", &pw);
    int64_t acked[NKEYS] = {0}, inflight[NKEYS] = {0};
    tincr_load_t l;
    load_start(&l, p1, p2, 3);
    tsleep_ms(1500);
    long ok = tincr_stop(&l, acked, inflight);
    assert_true(ok > 200);
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(w2, STOP_MS), 0);
    wait_drained(&r, db);
    for (int k = 0; k < NKEYS; k++)
        assert_int_equal(inflight[k], 0);
    check_bounds(db, acked, inflight); /* with nothing in flight: equal */
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* ---- 3. a writer takes over another's pending entries ---- */

static void test_takeover(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "takeover");
    const char *db = db_path("takeover");
    int p1, pw;
    pid_t w1 = web(&r, "durable", &p1);
    int64_t acked[NKEYS] = {0}, inflight[NKEYS] = {0};
    tincr_load_t l;
    load_start(&l, p1, p1, 4);
    tsleep_ms(500);
    assert_true(tincr_stop(&l, acked, inflight) > 20);
    /* A writer "gone" reads every entry and dies before its commit: the
     * entries stay pending on it. (The group exists once a writer has
     * started; this one reads as the group's first consumer.) */
    redisContext *c = redis_conn(&r);
    assert_non_null(c);
    redisReply *rep = redisCommand(c, "XGROUP CREATE incrementor:stream writers 0 MKSTREAM");
    freeReplyObject(rep);
    rep =
        redisCommand(c, "XREADGROUP GROUP writers gone COUNT 100000 STREAMS incrementor:stream >");
    assert_true(rep && rep->type == REDIS_REPLY_ARRAY);
    freeReplyObject(rep);
    rep = redisCommand(c, "XPENDING incrementor:stream writers");
    assert_true(rep && rep->type == REDIS_REPLY_ARRAY && rep->element[0]->integer > 0);
    long long pending = rep->element[0]->integer;
    freeReplyObject(rep);
    /* Another writer claims them once idle for --claim-ms (300). */
    pid_t wr = writer(&r, db, "heir", &pw);
    wait_drained(&r, db);
    check_bounds(db, acked, inflight);
    rep = redisCommand(c, "XPENDING incrementor:stream writers");
    assert_true(rep && rep->type == REDIS_REPLY_ARRAY);
    assert_int_equal(rep->element[0]->integer, 0);
    freeReplyObject(rep);
    redisFree(c);
    char body[4096];
    assert_int_equal(get(pw, "/stats", body, sizeof body), 200);
    char want[64];
    snprintf(want, sizeof want, "\"claimed\":%lld", pending);
    assert_non_null(strstr(body, want));
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* 3b. A slow writer's entry taken over, applied, acknowledged and its
 * record pruned by the heir before the slow writer applies it: applied
 * once (the slow writer asks Redis under the database's write lock which
 * entries are still its own). */
static void test_takeover_slow_writer(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "slow");
    const char *db = db_path("slow");
    int p1, pa, pb;
    pid_t w1 = web(&r, "durable", &p1);
    pid_t a = writer_stalled(&r, db, "slow", "300", "1:2500", &pa);
    redisContext *c = redis_conn(&r);
    assert_non_null(c);
    assert_int_equal(post(p1, "key=k1&value=1", NULL), 200);
    for (int i = 0; i < 100 && pending_on(c, "slow") != 1; i++)
        tsleep_ms(10);
    assert_int_equal(pending_on(c, "slow"), 1); /* read, and held */
    pid_t b = writer(&r, db, "heir", &pb);
    /* The heir claims it after 300 ms; later entries let it trim (every
     * second) and prune in its next transaction, all before A resumes. */
    for (int i = 0; i < 20; i++) {
        assert_int_equal(post(p1, "key=k2&value=1", NULL), 200);
        tsleep_ms(100);
    }
    assert_true(stats_has(pb, "\"claimed\":1"));
    /* A resumes (2.5 s after its read) and leaves the entry to the heir. */
    assert_true(stats_has(pa, "\"released\":1"));
    wait_drained(&r, db);
    assert_true(same_values(&r, db, 1));
    redisFree(c);
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(a, STOP_MS), 0);
    assert_int_equal(tproc_stop(b, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* 3c. A takeover near a limit: the heir reads E2 (+5) before it may claim
 * E1 (-10, held by a dead writer), so applying E2 alone would leave int64;
 * it claims E1 and applies both in stream order. */
static void test_takeover_out_of_order(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "order");
    const char *db = db_path("order");
    int p1, pa, pb;
    pid_t w1 = web(&r, "durable", &p1);
    pid_t a = writer_stalled(&r, db, "dead", "1000", "2:60000", &pa);
    redisContext *c = redis_conn(&r);
    assert_non_null(c);
    assert_int_equal(post(p1, "key=k1&value=9223372036854775807", NULL), 200);
    wait_drained(&r, db);
    assert_int_equal(post(p1, "key=k1&value=-10", NULL), 200); /* E1 */
    for (int i = 0; i < 100 && pending_on(c, "dead") != 1; i++)
        tsleep_ms(10);
    assert_int_equal(pending_on(c, "dead"), 1);
    assert_int_equal(post(p1, "key=k1&value=5", NULL), 200); /* E2 */
    sigkill(a);
    pid_t b = writer_stalled(&r, db, "heir", "1000", "", &pb);
    wait_drained(&r, db);
    assert_int_equal(pending_on(c, "dead"), 0);
    assert_int_equal(pending_on(c, "heir"), 0);
    redisFree(c);
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(b, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* ---- 4. bad inputs, on every node ---- */

#define FORM "application/x-www-form-urlencoded"
#define JS   "application/json"

struct bad_case {
    const char *name;
    const char *ctype;
    const char *body;
    const char *raw;
    int status;
};

static const struct bad_case bad_cases[] = {
    {"missing value", FORM, "key=kx", NULL, 400},
    {"not an integer", FORM, "key=kx&value=1x", NULL, 400},
    {"out of range", FORM, "key=kx&value=9223372036854775808", NULL, 400},
    {"bad encoding", FORM, "key=%zz&value=1", NULL, 400},
    {"json malformed", JS, "{\"base\": ", NULL, 400},
    {"json duplicate", JS, "{\"kx\": 1, \"kx\": 2}", NULL, 400},
    {"json out of range", JS, "{\"base\": -9223372036854775809}", NULL, 400},
    {"text/plain", "text/plain", "key=kx&value=1", NULL, 415},
    {"too large", NULL, NULL,
     "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     "Content-Length: 5000000\r\n\r\n{",
     413},
    {"overflow up", FORM, "key=near&value=2", NULL, 422},
    {"overflow down", FORM, "key=low&value=-2", NULL, 422},
    {"overflow in a batch", JS, "{\"base\": 1, \"near\": 5}", NULL, 422},
    {"overflow of a new key", JS, "{\"new\": 1, \"low\": -2}", NULL, 422},
    {"to the limit", FORM, "key=near&value=1", NULL, 200},
    {"past it", FORM, "key=near&value=1", NULL, 422},
    {"back", FORM, "key=near&value=-1", NULL, 200},
    {"reads on a web node", NULL, NULL, "GET /counters/base HTTP/1.1\r\nHost: t\r\n\r\n", 421},
};

static void test_bad_inputs(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "bad");
    const char *db = db_path("bad");
    int p[2], pw;
    pid_t w1 = web(&r, "durable", &p[0]), w2 = web(&r, "durable", &p[1]);
    pid_t wr = writer(&r, db, "writer", &pw);
    assert_int_equal(post(p[0], "key=base&value=5", NULL), 200);
    assert_int_equal(post(p[1], "key=near&value=9223372036854775806", NULL), 200);
    assert_int_equal(post(p[0], "key=low&value=-9223372036854775807", NULL), 200);
    int failures = 0;
    char req[2048];
    for (int node = 0; node < 2; node++)
        for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
            const struct bad_case *bc = &bad_cases[i];
            if (bc->raw)
                snprintf(req, sizeof req, "%s", bc->raw);
            else
                snprintf(req, sizeof req,
                         "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         bc->ctype, strlen(bc->body), bc->body);
            int fd = tconn_must(p[node]);
            thttp_resp_t resp = {0};
            int rc = thttp_do(fd, req, &resp, RESP_MS);
            if (rc != 0 || resp.status != bc->status ||
                (bc->status != 200 && (!resp.body || !strstr(resp.body, "\"error\"")))) {
                fprintf(stderr, "node %d, %s: rc %d status %d, want %d; body %s\n", node, bc->name,
                        rc, resp.status, bc->status, resp.body ? resp.body : "");
                failures++;
            }
            thttp_free(&resp);
            close(fd);
        }
    assert_int_equal(failures, 0);
    /* The writer refuses increments. */
    assert_int_equal(post(pw, "key=base&value=1", NULL), 421);
    wait_drained(&r, db);
    char body[512];
    assert_int_equal(get(pw, "/counters?limit=10", body, sizeof body), 200);
    assert_string_equal(body, "{\"counters\":[{\"key\":\"base\",\"value\":5},{\"key\":\"low\","
                              "\"value\":-9223372036854775807},{\"key\":\"near\",\"value\":"
                              "9223372036854775806}],\"next\":null}");
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(w2, STOP_MS), 0);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* ---- 4b. the int64 rule with a buffered node: 'red' and the headroom ---- */

/* Poll the node's /stats until it contains `want` (up to 3 s). */
static int stats_has(int port, const char *want)
{
    char body[4096];
    for (int i = 0; i < 150; i++) {
        if (get(port, "/stats", body, sizeof body) == 200 && strstr(body, want))
            return 1;
        tsleep_ms(20);
    }
    fprintf(stderr, "stats never had %s: %s\n", want, body);
    return 0;
}

static void test_int64_buffered(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "int64");
    const char *db = db_path("int64");
    int p1, pw;
    pid_t w1 = web(&r, "buffered", &p1);
    pid_t wr = writer(&r, db, "writer", &pw);
    assert_true(stats_has(p1, "\"fast_path\":true"));
    /* 2^61 is the last value that is not 'red'. */
    assert_int_equal(post(p1, "key=big&value=2305843009213693952", NULL), 200);
    assert_int_equal(post(p1, "key=big&value=1", NULL), 200);
    assert_true(stats_has(p1, "\"fast_path\":false")); /* a value beyond 2^61: closed */
    assert_int_equal(post(p1, "key=big&value=-1", NULL), 200);
    assert_true(stats_has(p1, "\"fast_path\":true")); /* back within: open again */
    /* One live buffered node: a result within 2^51 of a limit is refused. */
    assert_int_equal(post(p1, "key=near&value=9223372036854775806", NULL), 422);
    assert_int_equal(post(p1, "{\"near\": -9223372036854775807}", NULL), 422);
    assert_int_equal(post(p1, "key=near&value=4611686018427387904", NULL), 200);
    /* 2^63 - 2^52 is below the limit by more than 2^51; 2^51 more is not. */
    assert_int_equal(post(p1, "{\"near\": 4607182418800017408, \"x\": 1}", NULL), 200);
    assert_int_equal(post(p1, "{\"x\": 1, \"near\": 2251799813685248}", NULL), 422);
    wait_drained(&r, db);
    char body[512];
    assert_int_equal(get(pw, "/counters?limit=10", body, sizeof body), 200);
    assert_string_equal(body, "{\"counters\":[{\"key\":\"big\",\"value\":2305843009213693952},"
                              "{\"key\":\"near\",\"value\":9218868437227405312},"
                              "{\"key\":\"x\",\"value\":1}],\"next\":null}");
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* ---- 5. Idempotency-Key across nodes and crashes ---- */

static void test_idempotency_across_nodes(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "idem");
    const char *db = db_path("idem");
    int p1, p2, pw;
    pid_t w1 = web(&r, "buffered", &p1), w2 = web(&r, "durable", &p2);
    pid_t wr = writer(&r, db, "writer", &pw);
    const char *ik = "Idempotency-Key: once-1\r\n";
    assert_int_equal(post(p1, "key=k1&value=7", ik), 200);
    assert_int_equal(post(p2, "key=k1&value=7", ik), 200); /* a retry elsewhere */
    assert_int_equal(post(p2, "key=k1&value=8", ik), 422); /* another request */
    sigkill(w1);                                           /* the first node dies */
    assert_int_equal(post(p2, "key=k1&value=7", ik), 200);
    sigkill(r.pid); /* Redis too */
    redis_start(&r);
    assert_int_equal(post(p2, "{\"k1\": 7}", ik), 200); /* same request as JSON */
    w1 = web(&r, "durable", &p1);
    assert_int_equal(post(p1, "key=k1&value=7", ik), 200);
    /* Duplicates alternating between the nodes: one applies. */
    const char *ik2 = "Idempotency-Key: once-2\r\n";
    for (int i = 0; i < 4; i++)
        assert_int_equal(post(i % 2 ? p2 : p1, "key=k2&value=3", ik2), 200);
    wait_drained(&r, db);
    int64_t got[NKEYS];
    assert_int_equal(db_read(db, got), 0);
    assert_int_equal(got[1], 7);
    assert_int_equal(got[2], 3);
    char body[4096];
    assert_int_equal(get(p1, "/stats", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"replayed\":2")); /* this node: k1 once, k2 once */
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(w2, STOP_MS), 0);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* One reply of Redis, as a number (an integer, or a string of one). */
static long long redis_num(const redis_t *r, const char *cmd)
{
    redisContext *c = redis_conn(r);
    assert_non_null(c);
    redisReply *rep = redisCommand(c, cmd);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_INTEGER  ? rep->integer
                  : rep->type == REDIS_REPLY_STRING ? strtoll(rep->str, NULL, 10)
                                                    : -1;
    freeReplyObject(rep);
    redisFree(c);
    return v;
}

/* A buffered node's fast sums stay exact where Lua's doubles would not:
 * across 2^52 and 2^53 (the script adds with HINCRBY, never in Lua; a
 * script that added small values itself must keep this), below zero and
 * through it; and a batch of 2,500 keys, Redis stopped while they were
 * acknowledged so that one batch carries them all, arrives whole. */
static void test_fast_sums_exact(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "fastsums");
    const char *db = db_path("fastsums");
    int p1, pw;
    pid_t w1 = web(&r, "buffered", &p1);
    pid_t wr = writer(&r, db, "writer", &pw);
    static const struct {
        const char *key, *value;
    } steps[] = {
        {"a", "4503599627370495"}, /* 2^52 - 1 */
        {"a", "1"},
        {"a", "1"},
        {"b", "-4503599627370495"}, /* the same below zero */
        {"b", "-2"},
        {"c", "9007199254740991"}, /* 2^53 - 1: a double could not add 1 and 1 */
        {"c", "1"},
        {"c", "1"},
        {"d", "5"}, /* to 0 and below */
        {"d", "-5"},
        {"d", "-7"},
    };
    char body[128];
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        snprintf(body, sizeof body, "key=%s&value=%s", steps[i].key, steps[i].value);
        assert_int_equal(post(p1, body, NULL), 200);
        wait_drained(&r, db); /* one step a batch */
    }
    assert_int_equal(kill(r.pid, SIGSTOP), 0);
    int bad = 0;
    for (int i = 0; i < 2500 && !bad; i++) {
        snprintf(body, sizeof body, "key=m%d&value=%d", i, i % 7 == 0 ? -i : i + 1);
        bad = post(p1, body, NULL) != 200;
    }
    assert_int_equal(kill(r.pid, SIGCONT), 0);
    assert_false(bad);
    wait_drained(&r, db); /* the database holds exactly Redis's values */
    char got[512];
    assert_int_equal(get(pw, "/counters?limit=4", got, sizeof got), 200);
    assert_string_equal(got, "{\"counters\":[{\"key\":\"a\",\"value\":4503599627370497},"
                             "{\"key\":\"b\",\"value\":-4503599627370497},"
                             "{\"key\":\"c\",\"value\":9007199254740993},"
                             "{\"key\":\"d\",\"value\":-7}],\"next\":\"d\"}");
    long long sum = 0;
    for (int i = 0; i < 2500; i++) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "HGET incrementor:values m%d", i);
        long long v = redis_num(&r, cmd);
        if (v != (i % 7 == 0 ? -i : i + 1))
            fail_msg("m%d is %lld in Redis", i, v);
        sum += v;
    }
    assert_true(sum != 0);
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* --idempotency-keys 3 on a node: past three keys the oldest are forgotten,
 * record and all, so Redis holds three; a retry with a forgotten key is a
 * new request (applied again), one with a kept key is still a replay. */
static void test_idempotency_bound(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "idembound");
    const char *argv[] = {tproc_bin("incrementor"),
                          "--queue",
                          r.url,
                          "--ack",
                          "durable",
                          "--port",
                          "0",
                          "--flush-ms",
                          "20",
                          "--idempotency-keys",
                          "3",
                          NULL};
    int port;
    pid_t w = tproc_start(argv, &port);
    assert_true(w > 0);
    char hdr[64];
    for (int i = 1; i <= 5; i++) { /* b-4 and b-5 evict b-1 and b-2 */
        snprintf(hdr, sizeof hdr, "Idempotency-Key: b-%d\r\n", i);
        assert_int_equal(post(port, "key=k1&value=1", hdr), 200);
    }
    assert_int_equal(post(port, "key=k1&value=1", "Idempotency-Key: b-5\r\n"), 200); /* replay */
    assert_int_equal(post(port, "key=k1&value=1", "Idempotency-Key: b-1\r\n"), 200); /* new */
    assert_int_equal(redis_num(&r, "HGET incrementor:values k1"), 6);
    assert_int_equal(redis_num(&r, "ZCARD incrementor:idem_order"), 3);
    assert_int_equal(redis_num(&r, "EXISTS incrementor:idem:b-2"), 0);
    assert_int_equal(redis_num(&r, "EXISTS incrementor:idem:b-5"), 1);
    char body[4096];
    assert_int_equal(get(port, "/stats", body, sizeof body), 200);
    if (!strstr(body, "\"keys\":3,") || !strstr(body, "\"evicted\":3") ||
        !strstr(body, "\"replayed\":1"))
        fail_msg("/stats: want 3 keys kept, 3 evicted and 1 replay: %s", body);
    assert_int_equal(tproc_stop(w, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* ---- 6. a buffered node cut off from Redis beyond its lease ---- */

typedef struct poster {
    int port;
    volatile int *stop;
    int64_t acked, inflight;
} poster_t;

/* POST key=cut&value=1 until *stop; count what was answered. */
static void *poster_main(void *arg)
{
    poster_t *p = arg;
    while (!*p->stop) {
        int st = post(p->port, "key=cut&value=1", NULL);
        if (st == 200)
            p->acked++;
        else if (st == 0)
            p->inflight++;
    }
    return NULL;
}

static void test_lease_expired(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "lease");
    const char *db = db_path("lease");
    int p1, pw;
    const char *argv[] = {tproc_bin("incrementor"),
                          "--queue",
                          r.url,
                          "--ack",
                          "buffered",
                          "--port",
                          "0",
                          "--flush-ms",
                          "20",
                          "--threads",
                          "1",
                          "--lease-ms",
                          "1000",
                          NULL};
    pid_t w1 = tproc_start(argv, &p1);
    assert_true(w1 > 0);
    pid_t wr = writer(&r, db, "writer", &pw);
    assert_true(stats_has(p1, "\"fast_path\":true"));
    volatile int stop = 0;
    poster_t ps = {.port = p1, .stop = &stop};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, poster_main, &ps), 0);
    tsleep_ms(200);
    /* Redis stops answering: the node acknowledges at once for at most
     * 500 ms more, then its requests wait; its batch reaches Redis after
     * the lease (1 s) and its acknowledged sums are dropped, as a crash of
     * a buffered node would lose them. */
    assert_int_equal(kill(r.pid, SIGSTOP), 0);
    tsleep_ms(1600);
    assert_int_equal(kill(r.pid, SIGCONT), 0);
    tsleep_ms(300);
    stop = 1;
    pthread_join(tid, NULL);
    assert_true(stats_has(p1, "\"fast_path\":true")); /* a new lease */
    char body[4096];
    assert_int_equal(get(p1, "/stats", body, sizeof body), 200);
    const char *lost = strstr(body, "\"lost_lease_expired\":");
    assert_non_null(lost);
    long long nlost = atoll(lost + strlen("\"lost_lease_expired\":"));
    assert_true(nlost > 0);
    assert_int_equal(tproc_stop(w1, STOP_MS), 0); /* it hands over what it holds */
    wait_drained(&r, db);
    /* What was dropped is what the node says it dropped. */
    sqlite3 *h;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(h, "SELECT value FROM counters WHERE key = 'cut'", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long got = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(h);
    fprintf(stderr, "  acknowledged %lld, in flight %lld, dropped %lld, database %lld\n",
            (long long)ps.acked, (long long)ps.inflight, nlost, got);
    assert_true(got >= ps.acked - nlost && got <= ps.acked - nlost + ps.inflight);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* 6b. Increments acknowledged under a lease that lapsed, left in the
 * node's open windows while it was cut off (a gate between it and Redis),
 * are dropped and counted with the fenced batch's, after a durable node
 * took the value to the limit meanwhile: never refused by HINCRBY. */

typedef struct gate {
    int lfd, port, upstream;
    volatile int closed, stop;
    pthread_t tid;
} gate_t;

/* Forward 127.0.0.1:g->port to the upstream port; while g->closed, drop
 * every connection and refuse new ones. */
static void *gate_main(void *arg)
{
    gate_t *g = arg;
    int fds[64];
    size_t n = 0;
    while (!g->stop) {
        struct pollfd p[65];
        p[0] = (struct pollfd){.fd = g->lfd, .events = POLLIN};
        for (size_t i = 0; i < n; i++)
            p[i + 1] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        if (poll(p, n + 1, 10) < 0)
            continue;
        if (p[0].revents & POLLIN) {
            int c = accept(g->lfd, NULL, NULL);
            int u = c >= 0 && !g->closed && n + 2 <= 64 ? tconn_open(g->upstream) : -1;
            if (u < 0) {
                if (c >= 0)
                    close(c);
            } else {
                fds[n++] = c;
                fds[n++] = u;
            }
        }
        int drop = g->closed;
        for (size_t i = 0; i < n && !drop; i++) {
            if (!(p[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char buf[65536];
            ssize_t got = read(fds[i], buf, sizeof buf);
            int peer = fds[i ^ 1];
            if (got <= 0 || write(peer, buf, (size_t)got) != got) {
                close(fds[i]); /* the pair goes: the other end of it sees EOF */
                close(peer);
                fds[i & ~(size_t)1] = fds[n - 2];
                fds[(i & ~(size_t)1) + 1] = fds[n - 1];
                n -= 2;
                break; /* poll again: the indices moved */
            }
        }
        if (drop) {
            for (size_t i = 0; i < n; i++)
                close(fds[i]);
            n = 0;
        }
    }
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
    return NULL;
}

static void gate_start(gate_t *g, int upstream)
{
    memset(g, 0, sizeof *g);
    g->upstream = upstream;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    g->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(g->lfd >= 0);
    assert_int_equal(bind(g->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(g->lfd, 16), 0);
    assert_int_equal(getsockname(g->lfd, (struct sockaddr *)&a, &len), 0);
    g->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&g->tid, NULL, gate_main, g), 0);
}

static void test_lease_lapsed_windows(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "lapsed");
    const char *db = db_path("lapsed");
    gate_t g;
    gate_start(&g, r.port);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", g.port);
    int px, py, pw;
    const char *argv[] = {tproc_bin("incrementor"),
                          "--queue",
                          url,
                          "--ack",
                          "buffered",
                          "--port",
                          "0",
                          "--flush-ms",
                          "20",
                          "--threads",
                          "1",
                          "--lease-ms",
                          "1000",
                          NULL};
    pid_t x = tproc_start(argv, &px);
    assert_true(x > 0);
    pid_t y = web(&r, "durable", &py);
    pid_t wr = writer(&r, db, "writer", &pw);
    assert_true(stats_has(px, "\"fast_path\":true"));
    g.closed = 1; /* x is cut off: its next batch waits */
    assert_int_equal(post(px, "key=k&value=1", NULL), 200);
    tsleep_ms(80);
    assert_int_equal(post(px, "key=k&value=2", NULL), 200); /* into its open window */
    tsleep_ms(1500);                                        /* its lease lapses */
    assert_int_equal(post(py, "key=k&value=9223372036854775807", NULL), 200);
    g.closed = 0;
    /* Both dropped: 1 fenced, 2 in the batch of mode l that follows. */
    assert_true(stats_has(px, "\"lost_lease_expired\":2"));
    char body[4096];
    assert_int_equal(get(px, "/stats", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"fast_refused\":0"));
    wait_drained(&r, db);
    assert_int_equal(get(pw, "/counters/k", body, sizeof body), 200);
    assert_non_null(strstr(body, "9223372036854775807"));
    assert_int_equal(tproc_stop(x, STOP_MS), 0);
    assert_int_equal(tproc_stop(y, STOP_MS), 0);
    assert_int_equal(tproc_stop(wr, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
    g.stop = 1;
    pthread_join(g.tid, NULL);
    close(g.lfd);
}

/* ---- 7. Redis changing under a durable node ---- */

static void redis_do(const redis_t *r, const char *cmd)
{
    redisContext *c = redis_conn(r);
    assert_non_null(c);
    redisReply *rep = redisCommand(c, cmd);
    assert_true(rep && rep->type != REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    redisFree(c);
}

/* The node's id from its /stats. */
static void node_id(int port, char *out, size_t len)
{
    char body[4096];
    assert_int_equal(get(port, "/stats", body, sizeof body), 200);
    const char *p = strstr(body, "\"node\":");
    assert_non_null(p);
    p += strlen("\"node\":");
    size_t n = strcspn(p, ",}");
    snprintf(out, len, "%.*s", (int)n, p);
}

/* A durable node answers only while Redis fsyncs before replying, checked
 * again on each new connection; and its id stays its own when Redis loses
 * its data (the counter of ids starts again). */
static void test_durable_recheck(void **state)
{
    (void)state;
    redis_t r;
    redis_new(&r, "recheck");
    int p1, p2;
    pid_t w1 = web(&r, "durable", &p1);
    assert_int_equal(post(p1, "key=k1&value=1", NULL), 200);
    redis_do(&r, "CONFIG SET appendfsync everysec");
    redis_do(&r, "CLIENT KILL TYPE normal"); /* the node reconnects */
    /* No answer while Redis would not fsync before replying. */
    int fd = tconn_must(p1);
    const char *req = "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: "
                      "application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\n"
                      "key=k2&value=1";
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&pf, 1, 800), 0);
    redis_do(&r, "CONFIG SET appendfsync always");
    thttp_resp_t resp = {0};
    assert_int_equal(thttp_read(fd, &resp, 0, RESP_MS), 0);
    assert_int_equal(resp.status, 200);
    thttp_free(&resp);
    close(fd);
    /* Redis loses everything: a new node's id is not the first's. */
    char id1[64], id2[64];
    node_id(p1, id1, sizeof id1);
    redis_do(&r, "FLUSHALL");
    pid_t w2 = web(&r, "durable", &p2);
    node_id(p2, id2, sizeof id2);
    assert_string_not_equal(id1, id2);
    assert_int_equal(post(p1, "key=k3&value=1", NULL), 200);
    assert_int_equal(post(p2, "key=k3&value=1", NULL), 200);
    assert_int_equal(tproc_stop(w1, STOP_MS), 0);
    assert_int_equal(tproc_stop(w2, STOP_MS), 0);
    assert_int_equal(tproc_stop(r.pid, STOP_MS), 0);
}

/* ---- the group ---- */

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/incrementor-redis.XXXXXX",
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
    tproc_stop_all(STOP_MS);
    return nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS) < 0 ? -1 : 0;
}

static int skip_unless_ready(void **state)
{
    (void)state;
    if (access(REDIS, X_OK) != 0) {
        fprintf(stderr, "skipped: " REDIS " is not installed (scripts/deps.sh installs it)\n");
        skip();
    }
    if (!tproc_exists("incrementor"))
        skip();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tproc_stop_all(STOP_MS); /* after a failure half-way */
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_durable_kill_rounds, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_buffered_sigterm_exact, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_takeover, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_takeover_slow_writer, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_takeover_out_of_order, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_bad_inputs, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_int64_buffered, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_fast_sums_exact, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_across_nodes, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_bound, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_lease_expired, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_lease_lapsed_windows, skip_unless_ready, teardown),
        cmocka_unit_test_setup_teardown(test_durable_recheck, skip_unless_ready, teardown),
    };
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
