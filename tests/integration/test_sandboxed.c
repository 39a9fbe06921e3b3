/* Integration tests of bin/server-sandboxed as a real process: tenant
 * routes beside the native ones, isolation over several connections and
 * loop threads, every hostile tenant of tests/integration/tenants-hostile
 * cut by its limit (503/504/500, the end of the sandbox's C stack among
 * them) with the server still serving the others, hot reload under load (no
 * failed request, a new version within 1 s, a broken file keeping the old
 * one, removal, a new tenant), a tenant whose top-level code takes most of a
 * second loading beside requests that stay fast, and a tenant that burns
 * half its time limit on every request held to its share of the loop, so
 * that the others' p99 stays under 100 ms.
 *
 * Skipped when the binary is not built. Every wait is bounded. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../lib/tlib.h"

#define T         10000 /* ms: the bound of an ordinary wait */
#define STOP_MS   5000
#define HOSTILE   "tests/integration/tenants-hostile"
#define RELOAD_MS 1000 /* a change must be served within this */

struct srv {
    pid_t pid;
    int port;
    char dir[256]; /* a scratch tenants directory, or "" */
};

static int start_threads(struct srv *s, const char *dir, const char *threads)
{
    const char *argv[] = {
        tproc_bin("server-sandboxed"), "--port", "0", "--threads", threads, "--tenants", dir, NULL};
    s->pid = tproc_start(argv, &s->port);
    return s->pid > 0 ? 0 : -1;
}

static int start(struct srv *s, const char *dir)
{
    return start_threads(s, dir, "2");
}

static int setup_hostile(void **state)
{
    static struct srv s;
    memset(&s, 0, sizeof s);
    *state = &s;
    if (!tproc_exists("server-sandboxed"))
        return 0;
    return start(&s, HOSTILE);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    assert_int_equal(tfile_write(dir, name, text), 0);
}

static int make_scratch(struct srv *s)
{
    memset(s, 0, sizeof *s);
    if (!tproc_exists("server-sandboxed"))
        return 0;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(s->dir, sizeof s->dir, "%s/tenants.XXXXXX", tmp);
    return mkdtemp(s->dir) ? 1 : -1;
}

static int setup_scratch(void **state)
{
    static struct srv s;
    *state = &s;
    int rc = make_scratch(&s);
    if (rc <= 0)
        return rc;
    write_file(s.dir, "hot.lua", "function handle(req) return 'v1\\n' end\n");
    return start(&s, s.dir);
}

/* One loop (--threads 1), hello, and burn: n empty loop steps per request
 * (?n=N), to measure this machine's speed and to load the loop. */
static const char burn_src[] = "function handle(req)\n"
                               "  local n = tonumber(req.query:match('n=(%d+)')) or 0\n"
                               "  for i = 1, n do end\n"
                               "  return 'burnt\\n'\n"
                               "end\n";

static int setup_one_loop(void **state)
{
    static struct srv s;
    *state = &s;
    int rc = make_scratch(&s);
    if (rc <= 0)
        return rc;
    write_file(s.dir, "hello.lua", "function handle(req) return 'hello, world\\n' end\n");
    write_file(s.dir, "burn.lua", burn_src);
    return start_threads(&s, s.dir, "1");
}

static int teardown(void **state)
{
    struct srv *s = *state;
    int st = 0;
    if (s->pid > 0)
        st = tproc_stop(s->pid, STOP_MS);
    s->pid = 0;
    if (s->dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", s->dir);
    }
    if (st != 0) {
        print_error("server-sandboxed: SIGTERM gave exit status %d, want 0\n", st);
        return -1;
    }
    return 0;
}

static struct srv *srv(void **state)
{
    struct srv *s = *state;
    if (s->pid <= 0)
        skip();
    return s;
}

/* GET path on fd (keep-alive); the status, body in r. */
static int get(int fd, const char *path, thttp_resp_t *r)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path);
    int rc = thttp_do(fd, req, r, T);
    if (rc < 0)
        return rc;
    return r->status;
}

/* One request on a new connection: status, and the body copied into body. */
static int ask(const struct srv *s, const char *path, char *body, size_t cap, long long *took)
{
    thttp_resp_t r = {0};
    int fd = tconn_must(s->port);
    long long t0 = tnow_ms();
    int st = get(fd, path, &r);
    if (took)
        *took = tnow_ms() - t0;
    if (body)
        snprintf(body, cap, "%s", st > 0 ? r.body : "");
    thttp_free(&r);
    close(fd);
    return st;
}

static void expect(const struct srv *s, const char *path, int status, const char *body)
{
    char got[4096];
    int st = ask(s, path, got, sizeof got, NULL);
    if (st != status || (body && strcmp(got, body) != 0))
        fail_msg("GET %s: %d \"%s\", want %d \"%s\"", path, st, got, status, body ? body : "*");
}

/* ---- routes ---- */

static void test_routes(void **state)
{
    struct srv *s = srv(state);
    expect(s, "/t/hello/", 200, "hello, world\n");
    expect(s, "/t/hello", 200, "hello, world\n");
    expect(s, "/t/hello/deeper/path?q=1", 200, "hello, world\n");
    expect(s, "/", 200, "hello, world\n");
    expect(s, "/ping", 200, "PONG\n");
    expect(s, "/t/nobody/", 404, NULL);
    expect(s, "/t/", 404, NULL);
    expect(s, "/t/..%2f/", 404, NULL);
    char body[65536];
    assert_int_equal(ask(s, "/metrics", body, sizeof body, NULL), 200);
    assert_non_null(strstr(body, "sandbox_requests_total{tenant=\"hello\"} "));
    assert_non_null(strstr(body, "sandbox_tenant_loaded{tenant=\"spin\"} 1\n"));
}

static void test_request_api(void **state)
{
    struct srv *s = srv(state);
    /* The server's own echo tenant is in tenants/, not here: the binary
     * tenant shows what a tenant is given and refused. */
    char body[4096];
    assert_int_equal(ask(s, "/t/binary/", body, sizeof body, NULL), 200);
    const char *p = body;
    int refused = 0;
    while ((p = strstr(p, "attempt to load a binary chunk")) != NULL) {
        refused++;
        p++;
    }
    assert_int_equal(refused, 3);
    assert_non_null(strstr(body, "dump=nil"));
}

/* ---- isolation ---- */

struct client {
    const struct srv *s;
    const char *path;
    int n, bad, done;
    char last[64];
};

static void *isolation_client(void *arg)
{
    struct client *c = arg;
    int fd = tconn_open(c->s->port);
    if (fd < 0) {
        c->bad = c->n;
        return NULL;
    }
    for (int i = 0; i < c->n; i++) {
        thttp_resp_t r = {0};
        /* "1 1 1 1 nil <random>": nothing left by any earlier request, and
         * a random number of its own. */
        if (get(fd, "/t/counter/", &r) != 200 || strncmp(r.body, "1 1 1 1 nil ", 12) != 0 ||
            strcmp(r.body, c->last) == 0)
            c->bad++;
        else
            snprintf(c->last, sizeof c->last, "%s", r.body);
        thttp_free(&r);
    }
    close(fd);
    return NULL;
}

static void test_isolation(void **state)
{
    struct srv *s = srv(state);
    pthread_t th[6];
    struct client c[6];
    for (int i = 0; i < 6; i++) {
        c[i] = (struct client){s, "/t/counter/", 500, 0, 0, ""};
        assert_int_equal(pthread_create(&th[i], NULL, isolation_client, &c[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(c[i].bad, 0);
    }
}

/* ---- limits ---- */

static void test_limits(void **state)
{
    struct srv *s = srv(state);
    static const struct {
        const char *tenant;
        int status;
        int limit_ms; /* 0: answered at once */
    } cases[] = {
        {"spin", 504, 100},     {"pcall_spin", 504, 100}, {"pattern", 504, 100},
        {"gc_loop", 504, 100},  {"co_loop", 504, 100},    {"slow", 504, 20},
        {"memhog", 503, 2000},  {"rep", 503, 100},        {"tostring_trap", 500, 0},
        {"error_trap", 500, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[64], body[256];
        long long took;
        snprintf(path, sizeof path, "/t/%s/", cases[i].tenant);
        int st = ask(s, path, body, sizeof body, &took);
        if (st != cases[i].status)
            fail_msg("%s: %d \"%s\", want %d", path, st, body, cases[i].status);
        /* Within 2 x the limit (plus 100 ms for a loaded machine). */
        int bound = cases[i].limit_ms ? 2 * cases[i].limit_ms + 100 : 100;
        if (took > bound)
            fail_msg("%s: answered in %lld ms, bound %d", path, took, bound);
        expect(s, "/t/hello/", 200, "hello, world\n");
    }
    char body[65536];
    assert_int_equal(ask(s, "/metrics", body, sizeof body, NULL), 200);
    assert_non_null(strstr(body, "sandbox_errors_total{tenant=\"spin\",kind=\"timeout\"} 1\n"));
    assert_non_null(strstr(body, "sandbox_errors_total{tenant=\"memhog\",kind=\"memory\"} 1\n"));
    assert_non_null(
        strstr(body, "sandbox_limit_hits_total{tenant=\"gc_loop\",limit=\"time\"} 1\n"));
    assert_non_null(
        strstr(body, "sandbox_errors_total{tenant=\"tostring_trap\",kind=\"bad_return\"} 1\n"));
}

static void *hostile_client(void *arg)
{
    struct client *c = arg;
    while (!__atomic_load_n(&c->done, __ATOMIC_ACQUIRE)) {
        thttp_resp_t r = {0};
        int fd = tconn_open(c->s->port);
        if (fd < 0)
            break;
        int st = get(fd, c->path, &r);
        c->bad += st != 504 && st != 503;
        c->n++;
        thttp_free(&r);
        close(fd);
    }
    return NULL;
}

static void test_hostile_beside_others(void **state)
{
    struct srv *s = srv(state);
    pthread_t th[2];
    struct client c[2] = {{s, "/t/spin/", 0, 0, 0, ""}, {s, "/t/memhog/", 0, 0, 0, ""}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hostile_client, &c[i]), 0);
    int fd = tconn_must(s->port);
    long long t0 = tnow_ms();
    for (int i = 0; i < 100; i++) {
        thttp_resp_t r = {0};
        int st = get(fd, "/t/hello/", &r);
        if (st != 200)
            fail_msg("hello %d beside hostile tenants: %d", i, st);
        thttp_free(&r);
    }
    long long took = tnow_ms() - t0;
    close(fd);
    for (int i = 0; i < 2; i++) {
        __atomic_store_n(&c[i].done, 1, __ATOMIC_RELEASE);
        pthread_join(th[i], NULL);
        assert_int_equal(c[i].bad, 0);
        assert_true(c[i].n > 0);
    }
    /* A hostile request holds its loop for at most 2 x 100 ms. */
    assert_true(took < 100 * 200);
}

/* ---- the stack ---- */

/* Nested C calls that Lua does not bound (tenants-hostile/stack.lua, one
 * shape per path): each is cut at the end of the sandbox's stack (503), and
 * the server goes on serving that tenant, the others and its own routes.
 * stack_load.lua does it in its top-level code: refused at load, never
 * served. Before tenants ran on a stack of their own, each killed the
 * server (SIGSEGV; stack_load at its start). */
static void test_stack(void **state)
{
    struct srv *s = srv(state);
    static const char *const shapes[] = {"pcall", "wrap", "gsub", "sort", "close", "index"};
    const size_t n = sizeof shapes / sizeof shapes[0];
    for (size_t i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof path, "/t/stack/%s", shapes[i]);
        for (int k = 0; k < 2; k++) { /* on either loop, from the restored snapshot */
            expect(s, path, 503, "stack limit exceeded\n");
            expect(s, "/t/hello/", 200, "hello, world\n");
            expect(s, "/", 200, "hello, world\n");
        }
    }
    expect(s, "/t/stack/none", 404, "no such shape\n"); /* the tenant itself is fine */
    expect(s, "/t/stack_load/", 404, NULL);
    char body[65536], want[128];
    assert_int_equal(ask(s, "/metrics", body, sizeof body, NULL), 200);
    snprintf(want, sizeof want, "sandbox_errors_total{tenant=\"stack\",kind=\"stack\"} %zu\n",
             2 * n);
    assert_non_null(strstr(body, want));
    snprintf(want, sizeof want, "sandbox_limit_hits_total{tenant=\"stack\",limit=\"stack\"} %zu\n",
             2 * n);
    assert_non_null(strstr(body, want));
    assert_non_null(strstr(body, "sandbox_tenant_loaded{tenant=\"stack_load\"} 0\n"));
    assert_non_null(strstr(body, "sandbox_reload_errors_total{tenant=\"stack_load\"} 1\n"));
    assert_non_null(
        strstr(body, "sandbox_limit_hits_total{tenant=\"stack_load\",limit=\"stack\"} 1\n"));
}

/* ---- hot reload ---- */

struct loader {
    const struct srv *s;
    int done, requests, failed;
    char why[128];
};

static void *reload_client(void *arg)
{
    struct loader *l = arg;
    int fd = tconn_open(l->s->port);
    while (fd >= 0 && !__atomic_load_n(&l->done, __ATOMIC_ACQUIRE)) {
        thttp_resp_t r = {0};
        int st = get(fd, "/t/hot/", &r);
        if (st != 200 ||
            (strcmp(r.body, "v1\n") && strcmp(r.body, "v2\n") && strcmp(r.body, "v3\n"))) {
            if (!l->failed)
                snprintf(l->why, sizeof l->why, "%d \"%.60s\"", st, st > 0 ? r.body : "");
            l->failed++;
        }
        l->requests++;
        thttp_free(&r);
    }
    if (fd < 0)
        l->failed++;
    else
        close(fd);
    return NULL;
}

/* How long until GET path answers `status` with `body` (ms), or -1. */
static long long wait_for(const struct srv *s, const char *path, int status, const char *body,
                          int max_ms)
{
    long long t0 = tnow_ms();
    while (tnow_ms() - t0 <= max_ms) {
        char got[256];
        if (ask(s, path, got, sizeof got, NULL) == status && (!body || strcmp(got, body) == 0))
            return tnow_ms() - t0;
        tsleep_ms(10);
    }
    return -1;
}

static void test_hot_reload(void **state)
{
    struct srv *s = srv(state);
    expect(s, "/t/hot/", 200, "v1\n");
    pthread_t th[3];
    struct loader l[3];
    for (int i = 0; i < 3; i++) {
        l[i] = (struct loader){s, 0, 0, 0, ""};
        assert_int_equal(pthread_create(&th[i], NULL, reload_client, &l[i]), 0);
    }
    tsleep_ms(300);
    write_file(s->dir, "hot.lua", "function handle(req) return 'v2\\n' end\n");
    long long took = wait_for(s, "/t/hot/", 200, "v2\n", 3000);
    assert_true(took >= 0 && took <= RELOAD_MS);
    /* Broken files keep v2 serving. */
    write_file(s->dir, "hot.lua", "function handle(req) return 'v3\\n' \n");
    tsleep_ms(600);
    write_file(s->dir, "hot.lua", "error('top-level fails')\n");
    tsleep_ms(600);
    write_file(s->dir, "hot.lua", "while true do end\n");
    tsleep_ms(2000); /* its top-level is cut after 1 s (the load-time limit) */
    expect(s, "/t/hot/", 200, "v2\n");
    write_file(s->dir, "hot.lua", "function handle(req) return 'v3\\n' end\n");
    took = wait_for(s, "/t/hot/", 200, "v3\n", 3000);
    assert_true(took >= 0 && took <= RELOAD_MS);
    for (int i = 0; i < 3; i++) {
        __atomic_store_n(&l[i].done, 1, __ATOMIC_RELEASE);
        pthread_join(th[i], NULL);
        if (l[i].failed)
            fail_msg("client %d: %d of %d requests failed, first: %s", i, l[i].failed,
                     l[i].requests, l[i].why);
        assert_true(l[i].requests > 10);
    }
    char body[65536];
    assert_int_equal(ask(s, "/metrics", body, sizeof body, NULL), 200);
    assert_non_null(strstr(body, "sandbox_reload_errors_total{tenant=\"hot\"} 3\n"));
    assert_non_null(strstr(body, "sandbox_reloads_total{tenant=\"hot\"} 3\n"));
    /* A new tenant, then a removed one. */
    write_file(s->dir, "fresh.lua", "function handle(req) return 'fresh\\n' end\n");
    took = wait_for(s, "/t/fresh/", 200, "fresh\n", 3000);
    assert_true(took >= 0 && took <= RELOAD_MS);
    char path[512];
    snprintf(path, sizeof path, "%s/hot.lua", s->dir);
    assert_int_equal(unlink(path), 0);
    took = wait_for(s, "/t/hot/", 404, NULL, 3000);
    assert_true(took >= 0 && took <= RELOAD_MS);
}

/* ---- load-time work off the loop, and the loop's fair share ---- */

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A timed burn request: 200 and its microseconds. The burn tenant has the
 * default share of the loop, so a run of long requests is held back (503,
 * not run): wait for its bucket to drain (25% of the clock) and ask again. */
static long long timed_burn(int fd, const char *path)
{
    for (int tries = 0; tries < 100; tries++) {
        thttp_resp_t r = {0};
        long long t0 = now_us();
        int st = get(fd, path, &r);
        long long took = now_us() - t0;
        thttp_free(&r);
        if (st == 200)
            return took;
        assert_int_equal(st, 503);
        usleep(100 * 1000);
    }
    fail_msg("%s: held back for 10 s", path);
    return -1;
}

/* Empty loop steps per millisecond in a tenant on this machine: the fastest
 * of a few burn requests of at least 10 ms (the limit is 100 ms). */
static double steps_per_ms(const struct srv *s)
{
    int fd = tconn_must(s->port);
    long n = 100000;
    double best = 0;
    for (int i = 0; i < 20 && best == 0; i++) {
        char path[64];
        snprintf(path, sizeof path, "/t/burn/?n=%ld", n);
        long long took = timed_burn(fd, path);
        if (took < 10000) {
            n *= 2;
            continue;
        }
        for (int k = 0; k < 3; k++) {
            long long t = timed_burn(fd, path);
            took = t < took ? t : took;
        }
        best = (double)n * 1000.0 / (double)took;
    }
    close(fd);
    assert_true(best > 0);
    return best;
}

/* Alternates GET / and GET /t/hello/ on one connection, a millisecond
 * apart, and keeps the slowest answer. */
struct prober {
    const struct srv *s;
    int done, n, bad;
    long long max_us;
    char why[96];
};

static void *prober_main(void *arg)
{
    struct prober *p = arg;
    int fd = tconn_open(p->s->port);
    while (fd >= 0 && !__atomic_load_n(&p->done, __ATOMIC_ACQUIRE)) {
        thttp_resp_t r = {0};
        const char *path = p->n % 2 ? "/t/hello/" : "/";
        long long t0 = now_us();
        int st = get(fd, path, &r);
        long long took = now_us() - t0;
        if (st != 200 || strcmp(r.body, "hello, world\n") != 0) {
            if (!p->bad)
                snprintf(p->why, sizeof p->why, "%s: %d", path, st);
            p->bad++;
        }
        thttp_free(&r);
        p->max_us = took > p->max_us ? took : p->max_us;
        p->n++;
        tsleep_ms(1);
    }
    if (fd < 0)
        p->bad++;
    else
        close(fd);
    return NULL;
}

/* A tenant whose top-level code takes about a second, loaded and then
 * edited on a server with one loop: requests to other tenants and native
 * ones on that loop keep being answered at once, while the new tenant loads
 * and while its new version does. (Its .conf gives its top level 4 s rather
 * than the 1 s every tenant gets, so that a loaded machine can't push it
 * over its budget.) Loading it on the loop would stall every request there
 * for as long as the load takes, twice. */
static void test_load_off_loop(void **state)
{
    struct srv *s = srv(state);
    long steps = (long)(steps_per_ms(s) * 1000);
    pthread_t th;
    struct prober p = {s, 0, 0, 0, 0, ""};
    char src[256];
    write_file(s->dir, "slow.conf", "ms = 4000\n");
    assert_int_equal(pthread_create(&th, NULL, prober_main, &p), 0);
    tsleep_ms(200);
    long long took[2];
    for (int v = 1; v <= 2; v++) {
        char want[32];
        snprintf(src, sizeof src,
                 "for i = 1, %ld do end\nfunction handle(req) return 'slow v%d\\n' end\n", steps,
                 v);
        snprintf(want, sizeof want, "slow v%d\n", v);
        long long t0 = tnow_ms();
        write_file(s->dir, "slow.lua", src);
        long long w = wait_for(s, "/t/slow/", 200, want, 10000);
        took[v - 1] = w < 0 ? -1 : tnow_ms() - t0;
        tsleep_ms(300);
    }
    __atomic_store_n(&p.done, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    print_message("top level of %ld steps: v1 served %lld ms after its file was written, "
                  "v2 %lld ms after its edit; %d requests beside it, the slowest %lld ms\n",
                  steps, took[0], took[1], p.n, p.max_us / 1000);
    if (p.bad)
        fail_msg("%d of %d requests beside the loading tenant failed, first: %s", p.bad, p.n,
                 p.why);
    /* Each version did take a while to load (the file is picked up within
     * 200 ms, then its top level runs: about 1 s, from 0.5 s to 2 s on a
     * shared machine whose speed changes under the calibration). */
    long long load = took[0] < took[1] ? took[0] : took[1];
    assert_true(load >= 400);
    assert_true(p.n > 100);
    /* Not one request held up by a load: under a third of the time from a
     * write to the new version's first answer (which a load on the loop
     * would take half of at least), and under 350 ms, for a loaded
     * machine's hiccups. */
    long long bound = load / 3 < 350 ? load / 3 : 350;
    if (p.max_us >= bound * 1000)
        fail_msg("a request beside the loading tenant waited %lld ms (bound %lld)", p.max_us / 1000,
                 bound);
}

/* A client of the burning tenant: as fast as it is answered, a little
 * slower after a 503 (as a client backing off would). */
struct heavy {
    const struct srv *s;
    long steps;
    int done, ok, throttled, timeouts, bad;
};

static void *heavy_main(void *arg)
{
    struct heavy *h = arg;
    char path[64];
    snprintf(path, sizeof path, "/t/burn/?n=%ld", h->steps);
    int fd = tconn_open(h->s->port);
    while (fd >= 0 && !__atomic_load_n(&h->done, __ATOMIC_ACQUIRE)) {
        thttp_resp_t r = {0};
        int st = get(fd, path, &r);
        thttp_free(&r);
        if (st == 200) {
            h->ok++;
        } else if (st == 503) {
            h->throttled++;
            tsleep_ms(5);
        } else if (st == 504) {
            h->timeouts++; /* over its 100 ms on a loaded machine */
        } else {
            h->bad++;
            break;
        }
    }
    if (fd < 0)
        h->bad++;
    else
        close(fd);
    return NULL;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* A value of /metrics, -1 when it is not there. */
static double metric(const struct srv *s, const char *line)
{
    static char body[1 << 17];
    assert_int_equal(ask(s, "/metrics", body, sizeof body, NULL), 200);
    const char *p = strstr(body, line);
    return p ? strtod(p + strlen(line), NULL) : -1;
}

/* The burner's time in the sandbox and the requests it ran (not throttled). */
static void burner_runs(const struct srv *s, double *seconds, double *ran)
{
    *seconds = metric(s, "sandbox_seconds_total{tenant=\"burn\"} ");
    *ran = metric(s, "sandbox_requests_total{tenant=\"burn\"} ") -
           metric(s, "sandbox_errors_total{tenant=\"burn\",kind=\"throttled\"} ");
}

/* Four clients of a tenant that burns about 45 ms, half its time limit, on
 * every request, beside one client of hello, on one loop. Unchecked the
 * burner owns the loop (hello waits behind up to four of its requests,
 * hundreds of ms); held to its share, it runs one request at a time now
 * and then and is answered 503 without running in between, so a hello
 * waits for one of its requests at most: its p99 stays under 100 ms. */
/* p99 of n hellos 5 ms apart, in microseconds; their latencies in lat. */
static long long hello_p99(const struct srv *s, long long *lat, int *n, int max, int limit_ms)
{
    int fd = tconn_must(s->port);
    long long t_end = tnow_ms() + limit_ms;
    *n = 0;
    while (*n < max && tnow_ms() < t_end) {
        thttp_resp_t r = {0};
        long long t0 = now_us();
        int st = get(fd, "/t/hello/", &r);
        lat[(*n)++] = now_us() - t0;
        if (st != 200)
            fail_msg("hello %d: %d", *n, st);
        thttp_free(&r);
        tsleep_ms(5);
    }
    close(fd);
    qsort(lat, (size_t)*n, sizeof lat[0], cmp_ll);
    return lat[(*n * 99 + 99) / 100 - 1];
}

static void test_fair_share(void **state)
{
    struct srv *s = srv(state);
    long steps = (long)(steps_per_ms(s) * 45);
    double sec0, ran0, sec1, ran1;
    /* What this machine does to a hello by itself, now: its scheduling
     * delays are not the burner's doing. */
    static long long lat[300];
    int n;
    long long alone = hello_p99(s, lat, &n, 100, 4000);
    burner_runs(s, &sec0, &ran0);
    pthread_t th[4];
    struct heavy h[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (struct heavy){s, steps, 0, 0, 0, 0, 0};
        assert_int_equal(pthread_create(&th[i], NULL, heavy_main, &h[i]), 0);
    }
    tsleep_ms(500); /* past the burst a tenant may take at once */
    /* 300 hellos 5 ms apart: some 2 s, in which the burner runs a dozen
     * times or more (8 s at most: unchecked, each hello waits 100s of ms). */
    long long p99 = hello_p99(s, lat, &n, 300, 8000);
    int ok = 0, throttled = 0, timeouts = 0;
    for (int i = 0; i < 4; i++) {
        __atomic_store_n(&h[i].done, 1, __ATOMIC_RELEASE);
        pthread_join(th[i], NULL);
        assert_int_equal(h[i].bad, 0);
        ok += h[i].ok, throttled += h[i].throttled, timeouts += h[i].timeouts;
    }
    burner_runs(s, &sec1, &ran1);
    double run_ms = ran1 > ran0 ? (sec1 - sec0) * 1e3 / (ran1 - ran0) : 0;
    long long p50 = lat[(n - 1) / 2];
    print_message("burner (%ld steps, %.1f ms a run in the sandbox): %d answered, %d throttled, "
                  "%d timed out; hello beside it: %d requests, p50 %.1f ms, p99 %.1f ms, "
                  "max %.1f ms (alone: p99 %.1f ms)\n",
                  steps, run_ms, ok, throttled, timeouts, n, p50 / 1e3, p99 / 1e3, lat[n - 1] / 1e3,
                  alone / 1e3);
    /* Under 100 ms; or, when this shared machine stretched the burner's runs
     * towards its limit, under one and a half of them (unchecked: three or
     * four of them); plus what the machine did to a hello alone. */
    double bound = (run_ms * 1.5 > 100 ? run_ms * 1.5 : 100) + (double)alone / 1e3;
    if ((double)p99 >= bound * 1e3)
        fail_msg("hello's p99 beside the burner is %.1f ms, want < %.0f", p99 / 1e3, bound);
    assert_true(n >= 100);
    assert_true(ok > 0); /* held to a share, not shut out */
    assert_true(metric(s, "sandbox_errors_total{tenant=\"burn\",kind=\"throttled\"} ") > 0);
    assert_true(metric(s, "sandbox_errors_total{tenant=\"hello\",kind=\"throttled\"} ") == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_routes, setup_hostile, teardown),
        cmocka_unit_test_setup_teardown(test_request_api, setup_hostile, teardown),
        cmocka_unit_test_setup_teardown(test_isolation, setup_hostile, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup_hostile, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_beside_others, setup_hostile, teardown),
        cmocka_unit_test_setup_teardown(test_stack, setup_hostile, teardown),
        cmocka_unit_test_setup_teardown(test_hot_reload, setup_scratch, teardown),
        cmocka_unit_test_setup_teardown(test_load_off_loop, setup_one_loop, teardown),
        cmocka_unit_test_setup_teardown(test_fair_share, setup_one_loop, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
