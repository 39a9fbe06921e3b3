/* Unit tests of the sandbox core (servers/sandbox/sandbox.h): the request API,
 * isolation across thousands of requests and across threads, each limit
 * with its own hostile program, a tenant's share of its runner's time,
 * compile and top-level errors keeping the old version, versions built off
 * the runner's thread (the publisher's state taken by one runner, the
 * loader's by the others, the old version serving meanwhile), the tenants
 * directory (add, change, .conf, remove), counters.
 *
 * These tests run requests back to back on one thread, all of its time, so
 * the tenants here have no share limit (100%) unless a test gives one.
 *
 *   unit-test_sandbox                 the tests
 *   unit-test_sandbox --bench N       N hello requests through sandbox_run,
 *                                     ns per request (for callgrind, too)
 *
 * For slow runs (valgrind, scripts/test's memcheck pass):
 * SANDBOX_TEST_SLACK_MS (default 100) is added to every "within 2 x the
 * limit" bound, and SANDBOX_TEST_SCALE (default 1) divides the loop counts. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdatomic.h>
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
#include <lauxlib.h>
#include <lualib.h>

#include "../lib/tlib.h"
#include "sandbox/sandbox.h"

#define MS 100 /* the default time limit in these tests */

static char dir[256];
static int slack_ms = 100;
static int scale = 1;
static sandbox_runner_t *runner; /* the main thread's */

static void put_share(const char *name, const char *src, int ms, int share_pct)
{
    char err[256];
    sandbox_limits_t lim = {4096, ms ? ms : MS, share_pct};
    int rc = sandbox_put(name, src, strlen(src), &lim, err, sizeof err);
    if (rc < 0)
        fail_msg("sandbox_put %s: %s", name, err);
}

static void put_ok(const char *name, const char *src, int mem_kb, int ms)
{
    char err[256];
    sandbox_limits_t lim = {mem_kb ? mem_kb : 4096, ms ? ms : MS, 0};
    int rc = sandbox_put(name, src, strlen(src), &lim, err, sizeof err);
    if (rc < 0)
        fail_msg("sandbox_put %s: %s", name, err);
}

/* A waiter that raises a flag (sandbox_wait). One per thread, so that a
 * test failing while it waits leaves nothing on its stack behind. */
struct flag {
    sandbox_waiter_t w;
    int set;
};

static void flag_ready(sandbox_waiter_t *w)
{
    struct flag *f = (struct flag *)w;
    __atomic_store_n(&f->set, 1, __ATOMIC_RELEASE);
}

static __thread struct flag waiter;

/* After sandbox_run gave -EAGAIN: wait (at most 10 s + slack) until the
 * build it waits for has ended. Returns 0 or -ETIMEDOUT (no cmocka
 * failure: worker threads call this too). */
static int wait_ended(sandbox_runner_t *r, const char *name)
{
    waiter = (struct flag){{flag_ready, NULL}, 0};
    if (sandbox_wait(r, name, strlen(name), &waiter.w) < 0)
        return 0; /* over already */
    long long t0 = tnow_ms();
    while (!__atomic_load_n(&waiter.set, __ATOMIC_ACQUIRE)) {
        if (tnow_ms() - t0 > 10000 + slack_ms)
            return -ETIMEDOUT;
        usleep(1000);
    }
    return 0;
}

static void wait_built(sandbox_runner_t *r, const char *name)
{
    if (wait_ended(r, name) < 0)
        fail_msg("%s: its build never ended", name);
}

/* Run one request; the answer's body is copied (NUL-terminated) into body.
 * A version being built for this runner is waited for (-ETIMEDOUT when it
 * never comes). */
static int run_req(sandbox_runner_t *r, const char *name, const sandbox_req_t *q, char *body,
                   size_t cap, sandbox_resp_t *out)
{
    static const sandbox_req_t dflt = {"GET", 3, "/", 1, NULL, 0, NULL, 0, NULL, 0};
    sandbox_resp_t a;
    int rc;
    for (int tries = 0;; tries++) {
        /* cmocka puts its own SIGSEGV handler in place around every test. */
        assert_int_equal(sandbox_claim_faults(), 0);
        rc = sandbox_run(r, name, strlen(name), q ? q : &dflt, &a);
        if (rc != -EAGAIN)
            break;
        if (tries == 100 || wait_ended(r, name) < 0)
            return -ETIMEDOUT;
    }
    if (body)
        body[0] = 0;
    if (rc < 0)
        return rc;
    if (body)
        snprintf(body, cap, "%.*s", (int)a.body_len, a.body);
    if (out)
        *out = a;
    return a.status;
}

static int status_of(const char *name)
{
    return run_req(runner, name, NULL, NULL, 0, NULL);
}

static void expect_body(const char *name, int status, const char *body)
{
    char got[4096];
    int st = run_req(runner, name, NULL, got, sizeof got, NULL);
    if (st != status || strcmp(got, body) != 0)
        fail_msg("%s: got %d \"%s\", want %d \"%s\"", name, st, got, status, body);
}

/* ---- the request API ---- */

static void test_hello(void **state)
{
    (void)state;
    put_ok("hello", "function handle(req) return 'hello, world\\n' end", 0, 0);
    sandbox_resp_t a;
    char body[64];
    assert_int_equal(run_req(runner, "hello", NULL, body, sizeof body, &a), 200);
    assert_string_equal(body, "hello, world\n");
    assert_string_equal(a.content_type, "text/plain");
    assert_int_equal(a.outcome, SB_OK);
    assert_int_equal(sandbox_run(runner, "nobody", 6, NULL, &a), -ENOENT);
    assert_int_equal(sandbox_run(runner, "../etc", 6, NULL, &a), -ENOENT);
}

static void test_request_fields(void **state)
{
    (void)state;
    put_ok("fields",
           "function handle(req)\n"
           "  local h = {}\n"
           "  for k, v in pairs(req.headers) do h[#h + 1] = k .. '=' .. v end\n"
           "  table.sort(h)\n"
           "  return 201, req.method .. ' ' .. req.path .. ' ' .. req.query .. ' ' .. req.body ..\n"
           "    ' ' .. table.concat(h, ','), 'application/x-test'\n"
           "end\n",
           0, 0);
    http_header_t hs[] = {{"Host", 4, "example", 7}, {"X-Dup", 5, "a", 1}, {"x-dup", 5, "b", 1}};
    sandbox_req_t q = {"POST", 4, "/a/b", 4, "x=1&y=2", 7, hs, 3, "payload", 7};
    char body[256];
    sandbox_resp_t a;
    assert_int_equal(run_req(runner, "fields", &q, body, sizeof body, &a), 201);
    assert_string_equal(body, "POST /a/b x=1&y=2 payload host=example,x-dup=a, b");
    assert_string_equal(a.content_type, "application/x-test");

    /* pairs(req) shows every field, also those never read. */
    put_ok("pairs",
           "function handle(req) local n = 0\n"
           "  for k in pairs(req) do n = n + 1 end return tostring(n) end",
           0, 0);
    expect_body("pairs", 200, "5");
    /* No query: "", no body: "". A field set by the tenant stays its own. */
    put_ok("empty",
           "function handle(req) req.method = 'X'\n"
           "  return '[' .. req.query .. '][' .. req.body .. '][' .. req.method .. ']' end",
           0, 0);
    expect_body("empty", 200, "[][][X]");
}

static void test_returns(void **state)
{
    (void)state;
    static const struct {
        const char *src;
        int status;
        const char *body;
    } cases[] = {
        {"return 'text'", 200, "text"},
        {"return 404, 'gone'", 404, "gone"},
        {"return 503", 503, ""},
        {"return 200.0, 'float status'", 200, "float status"},
        {"return 200, 'x', 'text/html'", 200, "x"},
        {"", 500, NULL},                /* nothing */
        {"return {}", 500, NULL},       /* a table */
        {"return 99, 'x'", 500, NULL},  /* not a status */
        {"return 204, 'x'", 500, NULL}, /* no body allowed */
        {"return 200.5, 'x'", 500, NULL},
        {"return '200', 'x'", 500, NULL},                       /* strings are not statuses */
        {"return 200, 42", 500, NULL},                          /* body must be a string */
        {"return 200, 'x', 'a\\r\\nSet-Cookie: 1'", 500, NULL}, /* header injection */
        {"return 200, 'x', {}", 500, NULL},
        {"return 200, setmetatable({}, {__tostring = function() while true do end end})", 500,
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char src[512], body[256];
        sandbox_resp_t a;
        snprintf(src, sizeof src, "function handle(req) %s end", cases[i].src);
        put_ok("ret", src, 0, 0);
        long long t0 = tnow_ms();
        int st = run_req(runner, "ret", NULL, body, sizeof body, &a);
        if (st != cases[i].status)
            fail_msg("%s: status %d, want %d (%s)", cases[i].src, st, cases[i].status, body);
        if (cases[i].body)
            assert_string_equal(body, cases[i].body);
        else
            assert_int_equal(a.outcome, SB_BAD_RETURN);
        assert_true(tnow_ms() - t0 < MS); /* no metamethod ran */
    }
}

/* ---- isolation ---- */

static const char counter_src[] =
    "count = 0\n"
    "local up = 0\n"
    "local smt = getmetatable('')\n"
    "function handle(req)\n"
    "  count = count + 1\n"
    "  up = up + 1\n"
    "  smt.__index.mark = (smt.__index.mark or 0) + 1\n"
    "  string.mark2 = (string.mark2 or 0) + 1\n"
    "  local seen = rawget(_G, 'left_behind')\n"
    "  left_behind = true\n"
    "  setmetatable(_G, {__index = function() return 'poisoned' end})\n"
    "  math.randomseed(42)\n"
    "  local garbage = {}\n"
    "  for i = 1, 200 do garbage[i] = tostring(i) .. ('x'):rep(i) end\n"
    "  return string.format('%d %d %d %d %s', count, up, ('').mark, string.mark2, tostring(seen))\n"
    "end\n";

static void test_isolation(void **state)
{
    (void)state;
    put_ok("counter", counter_src, 0, 2000 + slack_ms); /* never reached */
    for (int i = 0; i < 5000 / scale; i++) {
        char body[64];
        int st = run_req(runner, "counter", NULL, body, sizeof body, NULL);
        if (st != 200 || strcmp(body, "1 1 1 1 nil") != 0)
            fail_msg("request %d: %d \"%s\"", i, st, body);
    }
}

/* A state of some 340 KB. Every request checks part of it, writes a few
 * entries near its start and appends to a list; a few also write far away
 * and are cut by the time limit (by the hook, or by the jump out of a C
 * call). No request may see another's writes, and restores copy back the
 * pages requests write, a small part of the state (sandbox_arena.c). */
static const char big_src[] =
    "N = 20000\n"
    "t = {}\n"
    "for i = 1, N do t[i] = i * 3 end\n"
    "log = {}\n"
    "function handle(req)\n"
    "  for k = 1, 100 do if t[k] ~= k * 3 then return 'stale near' end end\n"
    "  for j = 1, 200 do\n"
    "    local k = math.random(N) if t[k] ~= k * 3 then return 'stale far' end\n"
    "  end\n"
    "  if #log ~= 0 then return 'stale log' end\n"
    "  for j = 1, 5 do t[math.random(100)] = -1 end\n"
    "  log[#log + 1] = req.path\n"
    "  if req.path ~= '/' then\n"
    "    t[math.random(N)] = -1\n"
    "    if req.path == '/spin' then while true do end end\n"
    "    local s = ('a'):rep(60) s:find(('a*'):rep(60) .. 'b')\n"
    "  end\n"
    "  return 'ok'\n"
    "end\n";

static void test_isolation_large_state(void **state)
{
    (void)state;
    put_ok("big", big_src, 0, 30);
    for (int i = 0; i < 1500 / scale; i++) {
        static const char *const cut[] = {"/spin", "/cspin"};
        int period = 300 / scale, hostile = i % period == period / 2;
        const char *path = hostile ? cut[(i / period) % 2] : "/";
        sandbox_req_t q = {"GET", 3, path, strlen(path), NULL, 0, NULL, 0, NULL, 0};
        char body[64];
        int st = run_req(runner, "big", &q, body, sizeof body, NULL);
        if (hostile ? st != 504 : st != 200 || strcmp(body, "ok") != 0)
            fail_msg("request %d (%s): %d \"%s\"", i, path, st, body);
    }
    sandbox_stats_t st;
    assert_int_equal(sandbox_stats("big", &st), 0);
    /* The state: 20000 array slots of 16 bytes, and the rest. */
    assert_true(st.restored_bytes / st.requests < 20000 * 16 / 4);
}

static void test_random_fresh(void **state)
{
    (void)state;
    /* randomseed(42) by one request must not fix the next one's numbers. */
    put_ok("rnd",
           "function handle(req) local x = math.random(1 << 62) math.randomseed(42)"
           " return tostring(x) end",
           0, 0);
    char first[64], body[64];
    int same = 0;
    run_req(runner, "rnd", NULL, first, sizeof first, NULL);
    for (int i = 0; i < 1000 / scale; i++) {
        run_req(runner, "rnd", NULL, body, sizeof body, NULL);
        same += strcmp(body, first) == 0;
        strcpy(first, body);
    }
    assert_int_equal(same, 0);
}

struct worker {
    int requests, bad;
    char first[96]; /* the first bad answer */
};

static void *isolation_thread(void *arg)
{
    struct worker *w = arg;
    sandbox_runner_t *r = sandbox_runner_new();
    for (int i = 0; i < w->requests; i++) {
        char body[64];
        int st = run_req(r, "counter", NULL, body, sizeof body, NULL);
        if (st != 200 || strcmp(body, "1 1 1 1 nil") != 0) {
            if (!w->bad++)
                snprintf(w->first, sizeof w->first, "request %d: %d \"%s\"", i, st, body);
        }
        if (i % 500 == 250 && (st = run_req(r, "spin", NULL, NULL, 0, NULL)) != 504) {
            if (!w->bad++) /* a hostile request now and then */
                snprintf(w->first, sizeof w->first, "request %d: spin %d", i, st);
        }
    }
    sandbox_runner_free(r);
    return NULL;
}

static void test_isolation_threads(void **state)
{
    (void)state;
    /* The counter's limit is never meant to be reached: under valgrind the
     * four threads take turns on one lock, and on a loaded machine a CI run
     * once saw one of its requests wait out 2 s behind the others (504). */
    put_ok("counter", counter_src, 0, 2000 + slack_ms);
    put_ok("spin", "function handle(req) while true do end end", 0, 30);
    pthread_t th[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){1500 / scale, 0, ""};
        assert_int_equal(pthread_create(&th[i], NULL, isolation_thread, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        if (w[i].bad)
            fail_msg("thread %d: %d bad answers, first %s", i, w[i].bad, w[i].first);
}

/* ---- the safe subset ---- */

static void test_safe_subset(void **state)
{
    (void)state;
    put_ok(
        "subset",
        "function handle(req)\n"
        "  local out = {}\n"
        "  for _, n in ipairs({'io', 'os', 'debug', 'package', 'require', 'dofile', 'loadfile',\n"
        "      'collectgarbage', 'print'}) do out[#out + 1] = n .. '=' .. type(_G[n]) end\n"
        "  out[#out + 1] = 'dump=' .. type(string.dump)\n"
        "  for _, n in ipairs({'string', 'table', 'math', 'utf8', 'coroutine', 'load', 'pcall'}) "
        "do\n"
        "    out[#out + 1] = n .. '=' .. type(_G[n]) end\n"
        "  return table.concat(out, ' ')\n"
        "end\n",
        0, 0);
    expect_body("subset", 200,
                "io=nil os=nil debug=nil package=nil require=nil dofile=nil loadfile=nil "
                "collectgarbage=nil print=nil dump=nil string=table table=table math=table "
                "utf8=table coroutine=table load=function pcall=function");
}

static void test_binary_chunks(void **state)
{
    (void)state;
    /* A real binary chunk would come from string.dump, which is gone: make
     * the header by hand. Every way of asking must be refused, and load of
     * text still works (with the tenant's globals, or a given env). */
    put_ok("bin",
           "function handle(req)\n"
           "  local c = "
           "'\\27LuaT\\0\\25\\147\\r\\n\\26\\n\\4\\8\\8xV\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0(w@\\1'\n"
           "  local n = 0\n"
           "  for _, mode in ipairs({'b', 'bt', 't'}) do\n"
           "    local f, err = load(c, 'x', mode)\n"
           "    if f == nil and err:find('binary') then n = n + 1 end\n"
           "  end\n"
           "  local f = load(function() local s = c; c = nil; return s end, 'x', 'b')\n"
           "  if f == nil then n = n + 1 end\n"
           "  x = 5\n"
           "  local g = load('return x', 'y', 'b')\n"
           "  local h = load('return x', 'y', 'b', {x = 7})\n"
           "  return n .. ' ' .. g() .. ' ' .. h()\n"
           "end\n",
           0, 0);
    expect_body("bin", 200, "4 5 7");
    char err[256];
    const char bin[] = "\x1bLuaT\0\x19\x93\r\n\x1a\n\4\x08\x08xV";
    assert_int_equal(sandbox_put("bin2", bin, sizeof bin - 1, NULL, err, sizeof err), -ENOEXEC);
    assert_non_null(strstr(err, "binary"));
}

/* ---- limits ---- */

/* A hostile program must end with `status` within 2 x its limit. */
static void expect_limit(const char *name, const char *src, int mem_kb, int ms, int status,
                         int outcome)
{
    put_ok(name, src, mem_kb, ms);
    sandbox_resp_t a;
    long long t0 = tnow_ms();
    int st = run_req(runner, name, NULL, NULL, 0, &a);
    long long took = tnow_ms() - t0;
    if (st != status || a.outcome != outcome)
        fail_msg("%s: %d (outcome %d), want %d (%d)", name, st, a.outcome, status, outcome);
    if (took > 2 * ms + slack_ms)
        fail_msg("%s: %lld ms for a %d ms limit", name, took, ms);
    /* The runner is fine afterwards, for this tenant and for others. */
    expect_body("hello", 200, "hello, world\n");
}

/* A tenant that keeps timing out is held to a share of the thread: after a
 * burst of timeouts it is answered 503 at once, without running, and the
 * other tenants on the thread are untouched. */
/* CPU seconds the calling thread has used: the fair share's measure. */
static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_timeout_share(void **state)
{
    (void)state;
    if (slack_ms > 1000)
        skip(); /* under valgrind: a cut comes seconds late */
    put_ok("hello", "function handle(req) return 'hello, world\\n' end", 0, 0);
    put_share("spin_share", "function handle(req) while true do end end", 20, 25);
    int timeouts = 0, throttled = 0;
    long long t0 = tnow_ms(), wall;
    double cpu = 0; /* in the requests that ran */
    while ((wall = tnow_ms() - t0) < 1000) {
        sandbox_resp_t a;
        double c0 = thread_cpu();
        int st = run_req(runner, "spin_share", NULL, NULL, 0, &a);
        if (a.outcome != SB_THROTTLED)
            cpu += thread_cpu() - c0;
        if (a.outcome == SB_TIMEOUT && st == 504)
            timeouts++;
        else if (a.outcome == SB_THROTTLED && st == 503)
            throttled++;
        else
            fail_msg("spin_share: %d (outcome %d)", st, a.outcome);
        expect_body("hello", 200, "hello, world\n");
    }
    print_message("spin_share: %d timeouts, %d throttled, %.0f ms on the CPU in %lld ms\n",
                  timeouts, throttled, cpu * 1e3, wall);
    /* Unchecked it would time out about 45 times (20 to 30 ms each): the
     * whole second on the CPU. Each timeout counts the CPU time it used
     * into a bucket of 100 ms that drains 250 ms a second: some 350 ms of
     * it (12 to 18 timeouts on an idle machine, more when the machine is
     * busy and a 20 ms cut holds less CPU time), and one more cut. */
    assert_true(cpu < 0.25 * (double)wall / 1e3 + 0.1 + 0.03 + 0.05);
    /* Held back, unless this machine never gave it more than its share (and
     * burst, and one cut more): a 20 ms cut holds less CPU time when others
     * take the CPU. */
    if (cpu > 0.25 * (double)wall / 1e3 + 0.1 + 0.03)
        assert_true(throttled > 0);
    else
        print_message("spin_share: the machine kept it within its share and burst\n");
}

/* A tenant that stays within its limit but keeps its thread busy is held to
 * its share too: what counts is the CPU time it uses in the sandbox. */
static void test_cpu_share(void **state)
{
    (void)state;
    if (slack_ms > 1000)
        skip(); /* under valgrind: the time in the sandbox is all valgrind's */
    put_share("busy", "function handle(req) for i = 1, 1e6 do end return 'ok' end", MS, 25);
    int ok = 0, throttled = 0;
    sandbox_stats_t st0, st1;
    assert_int_equal(sandbox_stats("busy", &st0), 0);
    long long t0 = tnow_ms(), wall;
    double cpu = 0; /* in the requests that ran */
    while ((wall = tnow_ms() - t0) < 1000) {
        sandbox_resp_t a;
        double c0 = thread_cpu();
        int st = run_req(runner, "busy", NULL, NULL, 0, &a);
        if (a.outcome != SB_THROTTLED)
            cpu += thread_cpu() - c0;
        if (a.outcome == SB_OK && st == 200)
            ok++;
        else if (a.outcome == SB_THROTTLED && st == 503)
            throttled++;
        else
            fail_msg("busy: %d (outcome %d)", st, a.outcome);
    }
    assert_int_equal(sandbox_stats("busy", &st1), 0);
    print_message("busy: %d answered, %d throttled, %.0f ms on the CPU, %.0f ms in the sandbox "
                  "on the clock, in %lld ms\n",
                  ok, throttled, cpu * 1e3, (st1.seconds - st0.seconds) * 1e3, wall);
    /* Unchecked: all of the second on the CPU, in the sandbox. Held to 25%
     * of the clock after a burst of 100 ms: 350 ms, and one request more (a
     * few ms, 100 at most), whatever else the machine runs. */
    assert_true(ok > 0 && throttled > 0);
    assert_true(cpu < 0.25 * (double)wall / 1e3 + 0.1 + 0.1);
    assert_int_equal(st1.outcomes[SB_THROTTLED] - st0.outcomes[SB_THROTTLED], throttled);
}

/* A thread that takes its turn on the CPU of the test's thread. */
static atomic_int hog_stop;
static void *hog(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&hog_stop, memory_order_relaxed))
        ;
    return NULL;
}

/* Run `name` back to back for a second on this thread's CPU beside `hogs`
 * threads that take their turns on it, and on until one is answered (5 s at
 * most: a machine loaded by others stretches each request). Counts answers
 * and refusals; the thread's CPU time and the wall time in *cpu (s) and
 * *wall (ms). A request over its time limit is the machine's doing (the
 * limit is of the clock): counted apart, printed, and not a failure. */
static void beside_hogs(const char *name, int hogs, int *ok, int *throttled, double *cpu,
                        long long *wall)
{
    cpu_set_t old, one;
    assert_int_equal(pthread_getaffinity_np(pthread_self(), sizeof old, &old), 0);
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof one, &one), 0);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setaffinity_np(&at, sizeof one, &one);
    pthread_t h[4];
    atomic_store(&hog_stop, 0);
    for (int i = 0; i < hogs; i++)
        assert_int_equal(pthread_create(&h[i], &at, hog, NULL), 0);
    pthread_attr_destroy(&at);

    *ok = *throttled = 0;
    int late = 0;
    long long t0 = tnow_ms();
    double c0 = thread_cpu();
    while ((*wall = tnow_ms() - t0) < 1000 || (*ok == 0 && *wall < 5000)) {
        sandbox_resp_t a;
        int st = run_req(runner, name, NULL, NULL, 0, &a);
        if (a.outcome == SB_OK && st == 200)
            (*ok)++;
        else if (a.outcome == SB_THROTTLED && st == 503)
            (*throttled)++;
        else if (a.outcome == SB_TIMEOUT && st == 504)
            late++;
        else
            fail_msg("%s: %d (outcome %d)", name, st, a.outcome);
    }
    *cpu = thread_cpu() - c0;
    atomic_store(&hog_stop, 1);
    for (int i = 0; i < hogs; i++)
        pthread_join(h[i], NULL);
    assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof old, &old), 0);
    print_message("%s beside %d hogs: %d answered, %d throttled, %d over the time limit; "
                  "%.0f ms on the CPU in %lld ms\n",
                  name, hogs, *ok, *throttled, late, *cpu * 1e3, *wall);
}

/* Issue 11, defect 4: the share is of the CPU time a tenant uses. With a
 * thread competing for the runner's CPU, a tenant's request takes about
 * twice its CPU time on the clock; charged the wall time, a tenant with a
 * 75% share running back to back fills its bucket (1 charged for every 0.75
 * drained) and is held back; charged its CPU time (about 0.5), never. */
static void test_share_charges_cpu(void **state)
{
    (void)state;
    if (slack_ms > 1000)
        skip(); /* under valgrind: its own scheduler, one thread at a time */
    put_share("steady", "function handle(req) for i = 1, 2e5 do end return 'ok' end", MS, 75);
    int ok, throttled;
    double cpu;
    long long wall;
    beside_hogs("steady", 1, &ok, &throttled, &cpu, &wall);
    /* The premise: the hog took its turns (else the test shows nothing). */
    if (cpu > 0.6 * (double)wall / 1e3)
        skip();
    assert_true(ok > 0);
    assert_int_equal(throttled, 0);
}

/* ... and yet a tenant within its CPU share cannot hold its loop most of
 * the time: beside three hogs a tenant gets a quarter of the CPU, under its
 * 30% share, while it holds the loop all the time; the loop's time it holds
 * drains at twice its share (60%), so it is held back. Charged the CPU
 * time alone, it was not, and the loop's other connections waited behind it
 * (hello's p99 beside a burner: 430 ms on a loaded machine). */
static void test_share_bounds_hold(void **state)
{
    (void)state;
    if (slack_ms > 1000)
        skip(); /* under valgrind: its own scheduler, one thread at a time */
    /* Requests of some 60 ms of CPU, longer than the scheduler's slices:
     * the hogs take the CPU in the middle of them, not only between them
     * (between requests, the tenant does not hold the loop). */
    put_share("holder", "function handle(req) for i = 1, 2e7 do end return 'ok' end", 2000, 30);
    /* One alone first: after a request that long, each is charged its
     * exact CPU time (the first is charged its clock, which the hogs would
     * stretch past the burst). */
    sandbox_resp_t first;
    assert_int_equal(run_req(runner, "holder", NULL, NULL, 0, &first), 200);
    int ok, throttled;
    double cpu;
    long long wall;
    beside_hogs("holder", 3, &ok, &throttled, &cpu, &wall);
    if (cpu > 0.28 * (double)wall / 1e3)
        skip(); /* the hogs did not take their turns: the CPU share decides */
    assert_true(ok > 0);
    assert_true(throttled > 0);
}

static void test_time_limits(void **state)
{
    (void)state;
    put_ok("hello", "function handle(req) return 'hello, world\\n' end", 0, 0);
    expect_limit("spin", "function handle(req) while true do end end", 0, MS, 504, SB_TIMEOUT);
    expect_limit("pcall_spin",
                 "function handle(req) while true do pcall(function() while true do end end)"
                 " end end",
                 0, MS, 504, SB_TIMEOUT);
    expect_limit("xpcall_spin",
                 "local function h() while true do end end\n"
                 "function handle(req) while true do xpcall(function() while true do end end, h)"
                 " end end",
                 0, MS, 504, SB_TIMEOUT);
    expect_limit("pattern",
                 "function handle(req) local s = ('a'):rep(60)"
                 " return tostring(s:find(('a*'):rep(60) .. 'b')) end",
                 0, MS, 504, SB_TIMEOUT);
    expect_limit("gc_loop",
                 "local mt = {__gc = function() while true do end end}\n"
                 "function handle(req) for i = 1, 1e7 do setmetatable({}, mt) end end",
                 0, MS, 504, SB_TIMEOUT);
    expect_limit("co_loop",
                 "function handle(req) coroutine.wrap(function() while true do end end)() end", 0,
                 MS, 504, SB_TIMEOUT);
    expect_limit(
        "close_loop",
        "function handle(req)\n"
        "  local x <close> = setmetatable({}, {__close = function() while true do end end})\n"
        "  while true do end\n"
        "end",
        0, MS, 504, SB_TIMEOUT);
    expect_limit("sort_loop",
                 "function handle(req) local t = {} for i = 1, 1000 do t[i] = i end\n"
                 "  while true do table.sort(t, function(a, b) return a > b end) end end",
                 0, MS, 504, SB_TIMEOUT);
    expect_limit("concat_loop",
                 "function handle(req) local t = {} for i = 1, 10000 do t[i] = 'abc' end\n"
                 "  while true do pcall(table.concat, t) end end",
                 0, MS, 504, SB_TIMEOUT);
    expect_limit("short", "function handle(req) while true do end end", 0, 10, 504, SB_TIMEOUT);
}

static void test_memory_limits(void **state)
{
    (void)state;
    put_ok("hello", "function handle(req) return 'hello, world\\n' end", 0, 0);
    expect_limit("hog", "function handle(req) local t = {} for i = 1, 1e9 do t[i] = i end end",
                 1024, 1000, 503, SB_MEMORY);
    expect_limit("rep_bomb", "function handle(req) return ('x'):rep(1e6):rep(2000) end", 1024, 1000,
                 503, SB_MEMORY);
    expect_limit("catching_hog",
                 "function handle(req) local keep = {} while true do pcall(function()\n"
                 "  for i = 1, 1e9 do keep[#keep + 1] = ('x'):rep(100) .. i end end) end end",
                 1024, 1000, 503, SB_MEMORY);
    expect_limit("concat_bomb",
                 "function handle(req) local t = {} for i = 1, 1e5 do t[i] = ('y'):rep(100) end\n"
                 "  return table.concat(t) end",
                 1024, 1000, 503, SB_MEMORY);
    expect_limit("deep",
                 "local function f(n) return 1 + f(n + 1) end\n"
                 "function handle(req) return f(1) end",
                 256, 1000, 503, SB_MEMORY);
    /* Garbage is not live memory: 10 MB allocated, little kept. */
    put_ok("garbage",
           "function handle(req) local s for i = 1, 10000 do s = ('z'):rep(1000) .. i end"
           " return #s .. '' end",
           1024, 10000);
    expect_body("garbage", 200, "1005");
}

static void test_lua_errors(void **state)
{
    (void)state;
    put_ok("err", "function handle(req) error('boom') end", 0, 0);
    sandbox_resp_t a;
    char body[256];
    assert_int_equal(run_req(runner, "err", NULL, body, sizeof body, &a), 500);
    assert_int_equal(a.outcome, SB_LUA_ERROR);
    assert_non_null(strstr(body, "boom"));
    /* An error object whose __tostring never ends: not called. */
    expect_limit("err_trap",
                 "function handle(req) error(setmetatable({}, {__tostring = function() while true"
                 " do end end})) end",
                 0, MS, 500, SB_LUA_ERROR);
    put_ok("nil_call", "function handle(req) return nothing() end", 0, 0);
    assert_int_equal(status_of("nil_call"), 500);
}

/* ---- the stack ---- */

/* Nested C calls that Lua 5.4.4 does not bound. 400 coroutines are resumed
 * (and suspended) at the top, each with a __close handler that nests one
 * shape of C recursion, within Lua's own count, and at the bottom closes
 * the next coroutine: its handler runs on that coroutine's count, which
 * starts low again (fixed upstream in 5.4.6). On the thread's 8 MiB stack
 * the close shape killed the process (SIGSEGV); each must reach the end of
 * the sandbox's stack instead. %s is the shape (defines nest(d, i)), the
 * second %s runs chain() at the top or in handle(). */
static const char stack_fmt[] =
    "local cos = {}\n"
    "local function close_next(i) if cos[i + 1] then coroutine.close(cos[i + 1]) end end\n"
    "local nest\n"
    "%s\n"
    "local function chain()\n"
    "  for i = 1, 400 do\n"
    "    cos[i] = coroutine.create(function()\n"
    "      local x <close> = setmetatable({}, {__close = function() nest(%d, i) end})\n"
    "      coroutine.yield()\n"
    "    end)\n"
    "    coroutine.resume(cos[i])\n"
    "  end\n"
    "  coroutine.close(cos[1])\n"
    "  return 'survived'\n"
    "end\n"
    "%s\n";

static const struct stack_shape {
    const char *name;
    int depth; /* levels of the shape per coroutine: its C calls stay under Lua's 200 */
    const char *nest;
} stack_shapes[] = {
    /* pcall nests (the shape of the report) */
    {"pcall", 150,
     "nest = function(d, i) if d == 0 then return close_next(i) end pcall(nest, d - 1, i) end"},
    /* coroutine.wrap's error path: it closes the dead coroutine's variables */
    {"wrap", 50,
     "nest = function(d, i) if d == 0 then return close_next(i) end\n"
     "  pcall(coroutine.wrap(function()\n"
     "    local x <close> = setmetatable({}, {__close = function() nest(d - 1, i) end})\n"
     "    error('e')\n"
     "  end))\n"
     "end"},
    /* string.gsub callbacks calling gsub */
    {"gsub", 150,
     "nest = function(d, i) if d == 0 then return close_next(i) end\n"
     "  string.gsub('x', '.', function() nest(d - 1, i) end)\n"
     "end"},
    /* table.sort comparators calling table.sort (once per level) */
    {"sort", 150,
     "nest = function(d, i) if d == 0 then return close_next(i) end\n"
     "  local once = true\n"
     "  table.sort({3, 1, 2}, function(a, b) if once then once = false nest(d - 1, i) end return a "
     "< b end)\n"
     "end"},
    /* __close handlers whose scope exit runs another */
    {"close", 150,
     "nest = function(d, i) if d == 0 then return close_next(i) end\n"
     "  local x <close> = setmetatable({}, {__close = function() nest(d - 1, i) end})\n"
     "end"},
    /* __index functions indexing another such table */
    {"index", 150,
     "local mt = {__index = function(t, k) return nest(t.d - 1, t.i) end}\n"
     "nest = function(d, i) if d == 0 then return close_next(i) end\n"
     "  return setmetatable({d = d, i = i}, mt).x\n"
     "end"},
};

#define N_SHAPES (sizeof stack_shapes / sizeof stack_shapes[0])

static void stack_src(char *out, size_t cap, const struct stack_shape *sh, int at_load)
{
    snprintf(out, cap, stack_fmt, sh->nest, sh->depth,
             at_load ? "chain()\nfunction handle(req) return 'loaded' end"
                     : "function handle(req) return chain() end");
}

static void test_stack_limit(void **state)
{
    (void)state;
    put_ok("hello", "function handle(req) return 'hello, world\\n' end", 0, 0);
    for (size_t i = 0; i < N_SHAPES; i++) {
        char src[2048], name[32], body[256];
        sandbox_resp_t a;
        sandbox_stats_t st;
        stack_src(src, sizeof src, &stack_shapes[i], 0);
        snprintf(name, sizeof name, "stack_%s", stack_shapes[i].name);
        put_ok(name, src, 65536, 2000); /* room to reach 8 MiB of C stack */
        for (int k = 0; k < 2; k++) {   /* and again, from the restored snapshot */
            int s = run_req(runner, name, NULL, body, sizeof body, &a);
            if (s != 503 || a.outcome != SB_STACK)
                fail_msg("%s: %d (outcome %d) \"%s\", want 503 (%d)", name, s, a.outcome, body,
                         SB_STACK);
            assert_string_equal(body, "stack limit exceeded\n");
            expect_body("hello", 200, "hello, world\n");
        }
        assert_int_equal(sandbox_stats(name, &st), 0);
        assert_int_equal(st.limit_stack, 2);
        assert_int_equal(st.outcomes[SB_STACK], 2);
    }
    buf_t out = {0};
    sandbox_metrics(&out, NULL);
    assert_int_equal(buf_reserve(&out, 1, (size_t)-1), 0);
    out.data[out.len] = 0;
    assert_non_null(
        strstr(buf_head(&out), "sandbox_errors_total{tenant=\"stack_pcall\",kind=\"stack\"} 2\n"));
    assert_non_null(strstr(buf_head(&out),
                           "sandbox_limit_hits_total{tenant=\"stack_pcall\",limit=\"stack\"} 2\n"));
    buf_free(&out);
}

/* The same at load time: the version is refused, the old one serves. */
static void test_stack_limit_at_load(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_SHAPES; i++) {
        char src[2048], name[32], err[256];
        sandbox_limits_t lim = {65536, 2000, 0};
        sandbox_stats_t st0, st1;
        snprintf(name, sizeof name, "stack_load_%s", stack_shapes[i].name);
        put_ok(name, "function handle(req) return 'v1' end", 0, 0);
        expect_body(name, 200, "v1");
        assert_int_equal(sandbox_stats(name, &st0), 0);
        stack_src(src, sizeof src, &stack_shapes[i], 1);
        int rc = sandbox_put(name, src, strlen(src), &lim, err, sizeof err);
        if (rc != -ENOEXEC || strcmp(err, "stack limit exceeded (top-level)") != 0)
            fail_msg("%s: %d \"%s\"", name, rc, err);
        expect_body(name, 200, "v1");
        assert_int_equal(sandbox_stats(name, &st1), 0);
        assert_int_equal(st1.limit_stack - st0.limit_stack, 1);
        assert_int_equal(st1.reload_errors - st0.reload_errors, 1);
    }
}

/* The stack holds what Lua allows: each shape nested to Lua's own bound of
 * C calls ends in Lua's error (caught here), not at the stack's end. */
static void test_stack_deep_but_legal(void **state)
{
    (void)state;
    static const char *const nests[] = {
        "local function f(s) return (s:gsub('.', f)) end return f('x')",
        "local mt = {} mt.__tostring = function(t) return string.format('%s %d', setmetatable({}, "
        "mt), 1) end"
        " return tostring(setmetatable({}, mt))",
        "local function r() local f, e = load(r) error(e, 0) end local f, e = load(r) error(e, 0)",
        "local function f() pcall(f) error('C stack overflow') end return f()",
        "local function f() coroutine.wrap(f)() end return f()",
        "local function c(a, b) table.sort({3, 2, 1}, c) return a < b end return table.sort({3, 2, "
        "1}, c)",
        "local mt = {} mt.__index = function(t, k) return setmetatable({}, mt)[k] end"
        " return setmetatable({}, mt).x",
    };
    for (size_t i = 0; i < sizeof nests / sizeof nests[0]; i++) {
        char src[1024], body[256];
        snprintf(src, sizeof src,
                 "function handle(req)\n"
                 "  local ok, err = pcall(function() %s end)\n"
                 "  return tostring(ok) .. ' ' .. tostring(err):match('stack overflow') .. ' ' .."
                 " ('x'):gsub('x', function() return 'fine' end)\n"
                 "end\n",
                 nests[i]);
        put_ok("deep", src, 0, 2000);
        int st = run_req(runner, "deep", NULL, body, sizeof body, NULL);
        if (st != 200 || strcmp(body, "false stack overflow fine") != 0)
            fail_msg("%s: %d \"%s\"", nests[i], st, body);
    }
}

/* The sandbox's coroutine.resume, wrap and close (its own, so that the time
 * limit knows which Lua thread runs) answer as the library's do: the same
 * program in a state with the library's prints the same, errors included. */
static const char coroutines_src[] =
    "function handle(req)\n"
    "  local out = {}\n"
    "  local function add(...)\n"
    "    local t = table.pack(...)\n"
    "    for i = 1, t.n do out[#out + 1] = tostring(t[i]) end\n"
    "    out[#out + 1] = '|'\n"
    "  end\n"
    "  local co = coroutine.create(function(a, b) local c = coroutine.yield(a + b, 'y') "
    "error('boom') end)\n"
    "  add(coroutine.resume(co, 1, 2)) add(coroutine.status(co))\n"
    "  add(coroutine.resume(co, 5)) add(coroutine.status(co))\n"
    "  add(coroutine.resume(co)) add(coroutine.close(co))\n"
    "  local w = coroutine.wrap(function(x) local y = coroutine.yield(x * 2) return y + 1, 'r' "
    "end)\n"
    "  add(w(3)) add(w(4)) add(pcall(w))\n"
    "  add(pcall(coroutine.wrap(function() error('x') end)))\n"
    "  add(pcall(coroutine.wrap(function() error(42) end)))\n"
    "  add(pcall(coroutine.wrap(function()\n"
    "    local t <close> = setmetatable({}, {__close = function() add('closed') end}) error('y') "
    "end)))\n"
    "  add(pcall(coroutine.wrap(function()\n"
    "    local t <close> = setmetatable({}, {__close = function() error('z', 0) end}) error('y') "
    "end)))\n"
    "  local c2 = coroutine.create(function()\n"
    "    local t <close> = setmetatable({}, {__close = function() add('c2 closed') end}) "
    "coroutine.yield() end)\n"
    "  coroutine.resume(c2) add(coroutine.close(c2)) add(coroutine.status(c2)) "
    "add(coroutine.close(c2))\n"
    "  local c3 = coroutine.create(function()\n"
    "    local t <close> = setmetatable({}, {__close = function() error('in close', 0) end})\n"
    "    coroutine.yield() end)\n"
    "  coroutine.resume(c3) add(coroutine.close(c3))\n"
    "  add(coroutine.close(coroutine.create(print or tostring)))\n"
    "  add(pcall(coroutine.close, coroutine.running()))\n"
    "  add(coroutine.resume(coroutine.running()))\n"
    "  add(pcall(coroutine.resume, 42)) add(pcall(coroutine.wrap, 42)) "
    "add(pcall(coroutine.close))\n"
    "  local na\n"
    "  na = coroutine.create(function()\n"
    "    add(pcall(coroutine.close, na))\n"
    "    local nb = coroutine.create(function() add(pcall(coroutine.close, na)) "
    "add(coroutine.resume(na)) end)\n"
    "    add(coroutine.resume(nb))\n"
    "  end)\n"
    "  add(coroutine.resume(na))\n"
    "  local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)\n"
    "  add(gen(), gen(), gen(), gen())\n"
    "  add(select('#', coroutine.resume(coroutine.create(function(...) return ... end), 1, nil, 3, "
    "nil)))\n"
    "  return table.concat(out, ' ')\n"
    "end\n";

static void test_coroutines_as_library(void **state)
{
    (void)state;
    char want[4096];
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    if (luaL_loadbufferx(L, coroutines_src, sizeof coroutines_src - 1, "@cotest.lua", "t") ||
        lua_pcall(L, 0, 0, 0) || lua_getglobal(L, "handle") != LUA_TFUNCTION ||
        lua_pcall(L, 0, 1, 0))
        fail_msg("in a plain state: %s", lua_tostring(L, -1));
    snprintf(want, sizeof want, "%s", lua_tostring(L, -1));
    lua_close(L);
    put_ok("cotest", coroutines_src, 0, 0);
    expect_body("cotest", 200, want);
}

/* The first stage of the time limit (the hook) stops a spin in a coroutine
 * at the limit, as it does outside one: the jump, at 1.5 x the limit, is for
 * C code only. A hook is per Lua thread, and it used to be set on the main
 * one only, so every one of these ran to the jump. */
static void test_coroutine_hook(void **state)
{
    (void)state;
    static const char *const spins[] = {
        "coroutine.wrap(function() while true do end end)()",
        "coroutine.resume(coroutine.create(function() while true do end end)) while true do end",
        "coroutine.wrap(function() coroutine.wrap(function() while true do end end)() end)()",
        "coroutine.wrap(function() while true do pcall(function() while true do end end) end "
        "end)()",
        "local co = coroutine.wrap(function() while true do coroutine.yield() end end)"
        " while true do co() end",
        "local co = coroutine.create(function()\n"
        "  local x <close> = setmetatable({}, {__close = function() while true do end end})\n"
        "  coroutine.yield() end)\n"
        "coroutine.resume(co) coroutine.close(co) while true do end",
    };
    const int ms = 300;
    if (slack_ms > 1000)
        skip(); /* under valgrind a signal waits for the translation to end */
    for (size_t i = 0; i < sizeof spins / sizeof spins[0]; i++) {
        char src[512];
        snprintf(src, sizeof src, "function handle(req) %s end", spins[i]);
        /* The jump can't come before 1.5 x the limit; the hook comes at the
         * limit plus a look of the watchdog (10 ms at most). A loaded
         * machine may delay it: three tries (each a tenant of its own, not
         * held back by the fair share). */
        long long best = -1;
        for (int k = 0; k < 3 && (best < 0 || best >= ms * 13 / 10); k++) {
            sandbox_resp_t a;
            char name[32];
            snprintf(name, sizeof name, "co_spin_%zu_%d", i, k);
            put_ok(name, src, 0, ms);
            long long t0 = tnow_ms();
            int st = run_req(runner, name, NULL, NULL, 0, &a);
            long long took = tnow_ms() - t0;
            if (st != 504 || a.outcome != SB_TIMEOUT)
                fail_msg("%s: %d (outcome %d)", spins[i], st, a.outcome);
            if (best < 0 || took < best)
                best = took;
        }
        if (best >= ms * 13 / 10)
            fail_msg("%s: cut after %lld ms, a %d ms limit (the hook did not stop it)", spins[i],
                     best, ms);
    }
}

/* ---- versions ---- */

static void test_bad_versions_keep_old(void **state)
{
    (void)state;
    char err[256];
    sandbox_stats_t st0, st1;
    sandbox_limits_t lim = {4096, MS, 0};
    put_ok("ver", "function handle(req) return 'v1' end", 0, 0);
    expect_body("ver", 200, "v1");
    assert_int_equal(sandbox_stats("ver", &st0), 0);
    static const char *const bad[] = {
        "function handle(req) return 'v2' ",           /* syntax */
        "error('top-level fails')",                    /* top-level error */
        "x = 1",                                       /* no handle */
        "handle = 42",                                 /* not a function */
        "while true do end",                           /* top-level never ends */
        "local t = {} for i = 1, 1e9 do t[i] = i end", /* top-level memory */
        "string.find(('a'):rep(60), ('a*'):rep(60) .. 'b')",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = sandbox_put("ver", bad[i], strlen(bad[i]), &lim, err, sizeof err);
        if (rc != -ENOEXEC)
            fail_msg("version \"%s\" was accepted (%d)", bad[i], rc);
        expect_body("ver", 200, "v1");
    }
    assert_int_equal(sandbox_stats("ver", &st1), 0);
    assert_int_equal(st1.reload_errors - st0.reload_errors, sizeof bad / sizeof bad[0]);
    assert_true(st1.limit_time > st0.limit_time);
    assert_true(st1.limit_memory > st0.limit_memory);
    put_ok("ver", "function handle(req) return 'v3' end", 0, 0);
    expect_body("ver", 200, "v3"); /* picked up at the next request */
    assert_int_equal(sandbox_remove("ver"), 0);
    assert_int_equal(status_of("ver"), -ENOENT);
    assert_int_equal(sandbox_remove("ver"), -ENOENT);
    put_ok("ver", "function handle(req) return 'v4' end", 0, 0);
    expect_body("ver", 200, "v4");
}

/* One request on r for a slow-loading tenant, by itself (no waiting): its
 * return code or status, the body in body, the time it took in *took. */
static int run_once(sandbox_runner_t *r, const char *name, char *body, size_t cap, long long *took)
{
    static const sandbox_req_t q = {"GET", 3, "/", 1, NULL, 0, NULL, 0, NULL, 0};
    sandbox_resp_t a;
    assert_int_equal(sandbox_claim_faults(), 0);
    long long t0 = tnow_ms();
    int rc = sandbox_run(r, name, strlen(name), &q, &a);
    *took = tnow_ms() - t0;
    snprintf(body, cap, "%.*s", rc == 0 ? (int)a.body_len : 0, rc == 0 ? a.body : "");
    return rc == 0 ? a.status : rc;
}

/* A version's top-level code never runs on a runner's thread: the state its
 * publisher built goes to the first runner that wants it, a second runner
 * is told to wait (-EAGAIN, at once) while the loader builds its own; a new
 * version goes to every runner serving the tenant at once (the publisher's
 * state to one, the loader's to the others), and a runner keeps serving
 * its previous version until its new state is there. */
/* The other runners of test_load_elsewhere, on this thread: freed by its
 * teardown even when it fails, newest first (a thread's time-limit guard is
 * its newest runner's until that one is freed). */
static sandbox_runner_t *extra[3];

static int free_extra(void **state)
{
    (void)state;
    for (int i = 2; i >= 0; i--) {
        sandbox_runner_free(extra[i]);
        extra[i] = NULL;
    }
    return 0;
}

static void test_load_elsewhere(void **state)
{
    (void)state;
    char src[256], body[64];
    long long took, t0;
    int busy = slack_ms > 1000 ? 0 : slack_ms; /* under valgrind: no timing */
    int ms = 3000 + slack_ms;
    sandbox_runner_t *r2 = extra[0] = sandbox_runner_new();
    assert_non_null(r2);
    /* About 0.1 s of top-level work (3 s allowed, for a loaded machine). */
    char fmt[128];
    snprintf(fmt, sizeof fmt, "for i = 1, %d do end\nfunction handle(req) return '%%s' end\n",
             30000000 / scale);
    snprintf(src, sizeof src, fmt, "v1");
    t0 = tnow_ms();
    put_share("slowtop", src, ms, 0);
    long long load = tnow_ms() - t0;
    print_message("slowtop: its top level takes %lld ms\n", load);
    /* The publisher's state: taken at once. */
    assert_int_equal(run_once(runner, "slowtop", body, sizeof body, &took), 200);
    assert_string_equal(body, "v1");
    if (busy)
        assert_true(took < load / 2);
    /* Another runner: told to wait at once, then answered from its own. */
    assert_int_equal(run_once(r2, "slowtop", body, sizeof body, &took), -EAGAIN);
    if (busy)
        assert_true(took < load / 2);
    assert_int_equal(run_once(r2, "slowtop", body, sizeof body, &took), -EAGAIN); /* still */
    wait_built(r2, "slowtop");
    assert_int_equal(run_once(r2, "slowtop", body, sizeof body, &took), 200);
    assert_string_equal(body, "v1");
    /* v2: r2 (the newer) gets the publisher's state; the loader starts
     * building one for runner at once, which serves v1 meanwhile (without
     * waiting: a build takes some 100 ms, the request follows at once). */
    snprintf(src, sizeof src, fmt, "v2");
    put_share("slowtop", src, ms, 0);
    assert_int_equal(run_once(r2, "slowtop", body, sizeof body, &took), 200);
    assert_string_equal(body, "v2");
    assert_int_equal(run_once(runner, "slowtop", body, sizeof body, &took), 200);
    if (strcmp(body, "v1") != 0 && strcmp(body, "v2") != 0)
        fail_msg("slowtop: \"%s\"", body);
    if (busy)
        assert_true(took < load / 2);
    wait_built(runner, "slowtop");
    assert_int_equal(run_once(runner, "slowtop", body, sizeof body, &took), 200);
    assert_string_equal(body, "v2");
    /* A wait for a version superseded before it was built ends all the
     * same, and the waiter finds the newest. */
    sandbox_runner_t *r3 = extra[1] = sandbox_runner_new();
    assert_non_null(r3);
    assert_int_equal(run_once(r3, "slowtop", body, sizeof body, &took), -EAGAIN);
    static struct flag f; /* outlives the test, should it fail while f waits */
    f = (struct flag){{flag_ready, NULL}, 0};
    assert_int_equal(sandbox_wait(r3, "slowtop", 7, &f.w), 0);
    snprintf(src, sizeof src, fmt, "v3");
    put_share("slowtop", src, ms, 0);
    assert_int_equal(run_once(r3, "slowtop", body, sizeof body, &took), 200);
    assert_string_equal(body, "v3");
    assert_int_equal(__atomic_load_n(&f.set, __ATOMIC_ACQUIRE), 1);
    /* Removed while a runner waits for its first version: its wait ends,
     * the tenant is gone; the runners that had it forget it too. */
    sandbox_runner_t *r4 = extra[2] = sandbox_runner_new();
    assert_non_null(r4);
    assert_int_equal(run_once(r4, "slowtop", body, sizeof body, &took), -EAGAIN);
    assert_int_equal(sandbox_remove("slowtop"), 0);
    wait_built(r4, "slowtop");
    assert_int_equal(run_once(r4, "slowtop", body, sizeof body, &took), -ENOENT);
    assert_int_equal(run_once(r2, "slowtop", body, sizeof body, &took), -ENOENT);
    /* Nothing to wait for: said so. */
    assert_int_equal(sandbox_wait(r4, "slowtop", 7, &f.w), -EALREADY);
}

static void write_file(const char *name, const char *text)
{
    assert_int_equal(tfile_write(dir, name, text), 0);
}

static void remove_file(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static void test_directory(void **state)
{
    (void)state;
    write_file("dirt.lua", "function handle(req) return 'one' end");
    assert_true(sandbox_scan() >= 1);
    expect_body("dirt", 200, "one");
    assert_int_equal(sandbox_scan(), 0); /* nothing changed */
    write_file("dirt.lua", "function handle(req) return 'two' end");
    assert_int_equal(sandbox_scan(), 1);
    expect_body("dirt", 200, "two");
    write_file("dirt.lua", "function handle(req) return 'three' "); /* broken */
    assert_int_equal(sandbox_scan(), 0);
    expect_body("dirt", 200, "two");
    assert_int_equal(sandbox_scan(), 0); /* reported once, not retried */
    /* A .conf: 20 ms for this tenant. */
    /* share = 100: never held back (under valgrind the spins' timeouts
     * are long enough to fill a smaller share, and 503 would hide 504). */
    write_file("dirt.conf", "# limits\nms = 20\nmem_kb = 512\nshare = 100\n");
    write_file("dirt.lua", "function handle(req) while true do end end");
    assert_int_equal(sandbox_scan(), 1);
    long long t0 = tnow_ms();
    assert_int_equal(status_of("dirt"), 504);
    assert_true(tnow_ms() - t0 <= 40 + slack_ms);
    /* A bad .conf keeps the old version. */
    write_file("dirt.conf", "ms = lots\n");
    write_file("dirt.lua", "function handle(req) return 'four' end");
    assert_int_equal(sandbox_scan(), 0);
    assert_int_equal(status_of("dirt"), 504);
    write_file("dirt.conf", "share = 0\n");
    assert_int_equal(sandbox_scan(), 0);
    assert_int_equal(status_of("dirt"), 504);
    remove_file("dirt.conf");
    assert_int_equal(sandbox_scan(), 1);
    expect_body("dirt", 200, "four");
    write_file("Bad Name.lua", "function handle(req) return 'x' end"); /* ignored */
    assert_int_equal(sandbox_scan(), 0);
    remove_file("Bad Name.lua");
    remove_file("dirt.lua");
    assert_int_equal(sandbox_scan(), 1);
    assert_int_equal(status_of("dirt"), -ENOENT);
    sandbox_stats_t st;
    assert_int_equal(sandbox_stats("dirt", &st), 0);
    assert_int_equal(st.loaded, 0);
    assert_int_equal(st.reload_errors, 3);
}

static void test_stats_and_metrics(void **state)
{
    (void)state;
    put_ok("counted",
           "function handle(req) if req.path == '/e' then error('x') end return 'ok' end", 0, 0);
    sandbox_stats_t st;
    sandbox_req_t e = {"GET", 3, "/e", 2, NULL, 0, NULL, 0, NULL, 0};
    for (int i = 0; i < 10; i++)
        run_req(runner, "counted", i < 3 ? &e : NULL, NULL, 0, NULL);
    assert_int_equal(sandbox_stats("counted", &st), 0);
    assert_int_equal(st.requests, 10);
    assert_int_equal(st.outcomes[SB_OK], 7);
    assert_int_equal(st.outcomes[SB_LUA_ERROR], 3);
    assert_true(st.seconds > 0 && st.seconds < 1);
    assert_int_equal(st.loaded, 1);
    buf_t out = {0};
    sandbox_metrics(&out, NULL);
    assert_int_equal(buf_reserve(&out, 1, (size_t)-1), 0);
    out.data[out.len] = 0;
    assert_non_null(strstr(buf_head(&out), "sandbox_requests_total{tenant=\"counted\"} 10\n"));
    assert_non_null(
        strstr(buf_head(&out), "sandbox_errors_total{tenant=\"counted\",kind=\"lua_error\"} 3\n"));
    assert_non_null(
        strstr(buf_head(&out), "sandbox_limit_hits_total{tenant=\"spin\",limit=\"time\"}"));
    buf_free(&out);
}

/* ---- set-up ---- */

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    const char *s = getenv("SANDBOX_TEST_SLACK_MS");
    if (s)
        slack_ms = atoi(s);
    if ((s = getenv("SANDBOX_TEST_SCALE")) && atoi(s) > 0)
        scale = atoi(s);
    snprintf(dir, sizeof dir, "%s/sandbox-test.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        return -1;
    sandbox_cfg_t cfg = {dir, 4096, MS, 1, 100}; /* no share limit: see the file head */
    if (sandbox_init(&cfg, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    runner = sandbox_runner_new();
    return runner ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    sandbox_runner_free(runner);
    sandbox_shutdown();
    rmdir(dir);
    return 0;
}

/* --bench N: the cost of a hello request through the API. */
static int bench(long n)
{
    char err[256];
    sandbox_cfg_t cfg = {NULL, 4096, MS, 1, 100}; /* back to back: no share limit */
    const char src[] = "function handle(req) return 'hello, world\\n' end";
    if (sandbox_init(&cfg, err, sizeof err) < 0 ||
        sandbox_put("hello", src, sizeof src - 1, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    sandbox_runner_t *r = sandbox_runner_new();
    http_header_t h = {"Host", 4, "127.0.0.1:9130", 14};
    sandbox_req_t q = {"GET", 3, "/", 1, NULL, 0, &h, 1, NULL, 0};
    sandbox_resp_t a;
    sandbox_run(r, "hello", 5, &q, &a); /* builds the runner's state */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++)
        sandbox_run(r, "hello", 5, &q, &a);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%ld requests, %.1f ns per request (status %d)\n", n, n ? ns / (double)n : 0, a.status);
    sandbox_runner_free(r);
    sandbox_shutdown();
    return a.status == 200 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--bench") == 0)
        return bench(atol(argv[2]));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_request_fields),
        cmocka_unit_test(test_returns),
        cmocka_unit_test(test_isolation),
        cmocka_unit_test(test_isolation_large_state),
        cmocka_unit_test(test_random_fresh),
        cmocka_unit_test(test_safe_subset),
        cmocka_unit_test(test_binary_chunks),
        cmocka_unit_test(test_time_limits),
        cmocka_unit_test(test_timeout_share),
        cmocka_unit_test(test_cpu_share),
        cmocka_unit_test(test_share_charges_cpu),
        cmocka_unit_test(test_share_bounds_hold),
        cmocka_unit_test(test_memory_limits),
        cmocka_unit_test(test_lua_errors),
        cmocka_unit_test(test_stack_limit),
        cmocka_unit_test(test_stack_limit_at_load),
        cmocka_unit_test(test_stack_deep_but_legal),
        cmocka_unit_test(test_coroutine_hook),
        cmocka_unit_test(test_coroutines_as_library),
        cmocka_unit_test(test_isolation_threads),
        cmocka_unit_test(test_bad_versions_keep_old),
        cmocka_unit_test_teardown(test_load_elsewhere, free_extra),
        cmocka_unit_test(test_directory),
        cmocka_unit_test(test_stats_and_metrics),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
