/* bin/loadgen as a real process: against the epoll server in both protocols,
 * against fake servers that freeze once, never answer, or count increments,
 * and with bad input. Every process started here is stopped by its PID and
 * every wait is bounded.
 *
 * The tests of a run are run once with each engine (--engine epoll and
 * uring: "test_x epoll", "test_x uring"), and must pass alike; the uring
 * ones are skipped, with the reason loadgen gives, where the kernel has no
 * io_uring loadgen can use. One more runs loadgen where io_uring_setup is
 * refused (a seccomp filter, as container runtimes install) and checks the
 * fallback to epoll, said once.
 *
 * Servers, the load generator and the fake servers (forked children of this
 * process) are started with tests/lib's tproc, so a failing test still stops
 * them by PID in its teardown (tproc_stop_all). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/net.h"
#include "../../loadgen/hlog.h"
#include "../lib/tlib.h"

#define MAX_ARGS 64

/* Split a command line on spaces ('~' stands for a space inside an argument). */
static int split(char *line, char **argv)
{
    int argc = 0;
    for (char *t = strtok(line, " "); t && argc < MAX_ARGS - 1; t = strtok(NULL, " ")) {
        for (char *p = t; *p; p++)
            if (*p == '~')
                *p = ' ';
        argv[argc++] = t;
    }
    argv[argc] = NULL;
    return argc;
}

/* Start bin/server-NAME --port 0 (tests/lib reads its port and kills it if
 * this test process dies). Returns the pid. */
static pid_t spawn_server(const char *name, int *port)
{
    char bin[64];
    snprintf(bin, sizeof bin, "server-%s", name);
    const char *argv[] = {tproc_bin(bin), "--port", "0", NULL};
    pid_t pid = tproc_start(argv, port);
    if (pid < 0)
        fail_msg("server-%s did not start: %s", name, strerror(-pid));
    return pid;
}

static void stop_server(pid_t pid)
{
    int rc = tproc_stop(pid, 3000);
    if (rc != 0)
        fail_msg("server exited %d on SIGTERM", rc);
}

/* The engine the running test's loadgen runs with ("epoll", "uring"), or
 * NULL: no --engine (the default). */
static const char *engine;

/* bin/loadgen, with --engine when the test has one (not for the merge
 * subcommand, which runs none), then args, into line. */
static void loadgen_line(char *line, size_t len, const char *args)
{
    int flag = engine && strncmp(args, "merge ", 6) != 0;
    snprintf(line, len, "%s%s%s %s", tproc_bin("loadgen"), flag ? " --engine " : "",
             flag ? engine : "", args);
}

/* Run bin/loadgen ARGS with a deadline; its stderr goes to errbuf. Returns
 * its exit status (137 when it had to be killed) and the wall time in
 * *wall_ms. */
static int run_loadgen(const char *args, int timeout_ms, char *errbuf, size_t errlen,
                       int64_t *wall_ms)
{
    char line[2048];
    char *argv[MAX_ARGS];
    loadgen_line(line, sizeof line, args);
    split(line, argv);
    long long t0 = tnow_ms();
    int rc = tproc_run((const char *const *)argv, timeout_ms, errbuf, errlen);
    if (wall_ms)
        *wall_ms = tnow_ms() - t0;
    return rc;
}

/* Why loadgen cannot run its io_uring engine here (its fallback line), or
 * NULL when it can. Asked once: a run against a closed port, which makes
 * the same checks before it fails to connect. */
static const char *uring_unavailable(void)
{
    static int asked;
    static char why[512];
    if (!asked) {
        char err[1024];
        const char *saved = engine;
        engine = "uring";
        run_loadgen("-c 1 -n 1 tcp://127.0.0.1:1", 5000, err, sizeof err, NULL);
        engine = saved;
        const char *line = strstr(err, "io_uring unavailable");
        if (line)
            snprintf(why, sizeof why, "%.*s", (int)strcspn(line, "\n"), line);
        asked = 1;
    }
    return why[0] ? why : NULL;
}

/* Start of a test run with each engine: its engine from the state, or a
 * skip saying why the kernel cannot run it. */
static void use_engine(void **state)
{
    engine = *state;
    if (strcmp(engine, "uring") == 0 && uring_unavailable()) {
        print_message("skipped: loadgen says %s\n", uring_unavailable());
        skip();
    }
}

static json_t *load_json(const char *path)
{
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        fail_msg("%s: %s", path, e.text);
    return j;
}

/* The value at a dotted path ("latency_us.p99"). */
static json_t *jget(json_t *j, const char *dotted)
{
    char key[128];
    snprintf(key, sizeof key, "%s", dotted);
    for (char *t = strtok(key, "."); t && j; t = strtok(NULL, "."))
        j = json_object_get(j, t);
    if (!j)
        fail_msg("no %s in the JSON", dotted);
    return j;
}

static long long jint(json_t *j, const char *dotted)
{
    json_t *v = jget(j, dotted);
    if (!json_is_integer(v))
        fail_msg("%s is not an integer", dotted);
    return (long long)json_integer_value(v);
}

static void assert_no_errors(json_t *j)
{
    json_t *errs = jget(j, "errors");
    const char *k;
    json_t *v;
    json_object_foreach(errs, k, v)
    {
        if (json_integer_value(v) != 0) {
            json_t *first = json_object_get(jget(j, "errors_first"), k);
            fail_msg("%lld %s errors (first: %s)", (long long)json_integer_value(v), k,
                     first ? json_string_value(first) : "?");
        }
    }
}

static char json_path[64];

static int setup(void **state)
{
    (void)state;
    snprintf(json_path, sizeof json_path, "/tmp/loadgen-test-%d.json", (int)getpid());
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(json_path);
    return 0;
}

/* After each test: stop whatever a failed assertion left running. */
static int stop_children(void **state)
{
    (void)state;
    tproc_stop_all(3000);
    engine = NULL;
    return 0;
}

/* A listening socket on a free port for a fake server; returns the fd. */
static int fake_listen(int *port)
{
    char err[128];
    int fd = net_listen("127.0.0.1", 0, 128, 0, err, sizeof err);
    assert_true(fd >= 0);
    *port = net_local_port(fd);
    return fd;
}

/* ---- against the epoll server ---- */

static void test_epoll_http(void **state)
{
    use_engine(state);
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[512], err[1024];
    snprintf(args, sizeof args, "-t2 -c4 -d1s -q --json %s --server-pid %d http://127.0.0.1:%d/",
             json_path, (int)srv, port);
    int rc = run_loadgen(args, 10000, err, sizeof err, NULL);
    if (rc != 0) {
        stop_server(srv);
        fail_msg("loadgen exited %d: %s", rc, err);
    }
    json_t *j = load_json(json_path);
    assert_int_equal(jint(j, "schema_version"), 1);
    assert_true(jint(j, "requests") > 1000);
    assert_true(json_real_value(jget(j, "rps")) > 1000);
    assert_no_errors(j);
    assert_true(jint(j, "latency_us.p50") > 0);
    assert_true(jint(j, "latency_us.p99") >= jint(j, "latency_us.p50"));
    assert_true(jint(j, "latency_us.max") >= jint(j, "latency_us.p9999"));
    assert_int_equal(jint(j, "latency_uncorrected_us.p50"), jint(j, "latency_us.p50"));
    assert_string_equal(json_string_value(jget(j, "config.protocol")), "http");
    assert_string_equal(json_string_value(jget(j, "config.engine")), engine);
    assert_int_equal(jint(j, "config.threads"), 2);
    assert_true(json_array_size(jget(j, "per_second")) >= 1);
    assert_true(json_real_value(jget(j, "server.user_s")) +
                    json_real_value(jget(j, "server.system_s")) >
                0);
    assert_true(jint(j, "server.threads_max") >= 1);
    assert_true(jint(j, "server.peak_rss_kb") > 0);
    assert_true(json_real_value(jget(j, "loadgen_cpu.cpu_per_request_us")) > 0);
    json_decref(j);

    /* Pipelined, several paths whose bodies are checked, and a wrong path. */
    snprintf(args, sizeof args,
             "-c2 -d500ms -q --pipeline 8 --json %s --path /ping --path /burn?n=1000 "
             "http://127.0.0.1:%d/",
             json_path, port);
    assert_int_equal(run_loadgen(args, 10000, err, sizeof err, NULL), 0);
    j = load_json(json_path);
    assert_true(jint(j, "requests") > 1000);
    assert_no_errors(j);
    /* Cut off by the end: at most the requests in flight, none older than
     * the run. */
    assert_true(jint(j, "unfinished.requests") <= 2 * 8);
    assert_true(jint(j, "unfinished.oldest_us") < 500000);
    json_decref(j);

    snprintf(args, sizeof args, "-c1 -d300ms -q --json %s http://127.0.0.1:%d/nope", json_path,
             port);
    assert_int_equal(run_loadgen(args, 10000, err, sizeof err, NULL), 0);
    j = load_json(json_path);
    assert_int_equal(jint(j, "requests"), 0);
    assert_true(jint(j, "errors.status_4xx") > 0);
    assert_string_equal(json_string_value(jget(j, "errors_first.status_4xx")), "HTTP status 404");
    json_decref(j);

    /* -n: exactly that many. */
    snprintf(args, sizeof args, "-c3 -n 500 -q --json %s http://127.0.0.1:%d/", json_path, port);
    assert_int_equal(run_loadgen(args, 10000, err, sizeof err, NULL), 0);
    j = load_json(json_path);
    assert_int_equal(jint(j, "requests"), 500);
    assert_int_equal(jint(j, "unfinished.requests"), 0); /* -n waits for its answers */
    json_decref(j);
    stop_server(srv);
}

static void test_epoll_line(void **state)
{
    use_engine(state);
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[512], err[1024];
    snprintf(
        args, sizeof args,
        "-c4 -d1s -q --pipeline 4 --json %s --mix PING:50,BURN~1000:20,WAIT~1:10,STREAM~5000:20 "
        "tcp://127.0.0.1:%d",
        json_path, port);
    int rc = run_loadgen(args, 10000, err, sizeof err, NULL);
    if (rc != 0) {
        stop_server(srv);
        fail_msg("loadgen exited %d: %s", rc, err);
    }
    json_t *j = load_json(json_path);
    assert_true(jint(j, "requests") > 500);
    assert_no_errors(j);
    assert_string_equal(json_string_value(jget(j, "config.protocol")), "line");
    assert_int_equal(json_array_size(jget(j, "config.mix")), 4);
    json_decref(j);

    stop_server(srv);
}

static void test_scenarios(void **state)
{
    use_engine(state);
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[512], err[1024];
    snprintf(args, sizeof args,
             "-c2 -d1s -q --idle 20 --slowloris 3 --slow-readers 2 --slow-read-rate 8192 "
             "--json %s --hgrm %s.hgrm http://127.0.0.1:%d/",
             json_path, json_path, port);
    int rc = run_loadgen(args, 15000, err, sizeof err, NULL);
    stop_server(srv);
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);
    json_t *j = load_json(json_path);
    assert_true(jint(j, "requests") > 100);
    assert_no_errors(j);
    assert_int_equal(jint(j, "scenarios.idle.requested"), 20);
    assert_int_equal(jint(j, "scenarios.idle.open"), 20);
    assert_int_equal(jint(j, "scenarios.slowloris.open"), 3);
    assert_true(jint(j, "scenarios.slowloris.bytes_sent") >= 3);
    assert_int_equal(jint(j, "scenarios.slow_readers.open"), 2);
    assert_true(jint(j, "scenarios.slow_readers.bytes_read") > 1000);
    json_decref(j);

    char hgrm[96], text[65536];
    snprintf(hgrm, sizeof hgrm, "%s.hgrm", json_path);
    FILE *f = fopen(hgrm, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    unlink(hgrm);
    assert_non_null(strstr(text, "Percentile"));
    assert_non_null(strstr(text, "#[Mean"));
}

/* ---- fake servers ---- */

/* A line-protocol server that answers PING with PONG, one connection at a
 * time, and stalls for 1 s once, at its 300th answer. */
static void freeze_fake(int lfd)
{
    int served = 0;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        net_set_nodelay(fd);
        char buf[4096];
        size_t have = 0;
        ssize_t n;
        while ((n = read(fd, buf + have, sizeof buf - have)) > 0) {
            have += (size_t)n;
            char *p = buf, *nl;
            while ((nl = memchr(p, '\n', have - (size_t)(p - buf))) != NULL) {
                if (++served == 300)
                    usleep(1000000);
                if (net_write_all(fd, "PONG\n", 5) < 0)
                    break;
                p = nl + 1;
            }
            have -= (size_t)(p - buf);
            memmove(buf, p, have);
        }
        close(fd);
    }
}

static void test_freeze_corrected(void **state)
{
    use_engine(state);
    int port, lfd = fake_listen(&port);
    pid_t fake = tproc_fork();
    assert_true(fake >= 0);
    if (fake == 0)
        freeze_fake(lfd);
    close(lfd);
    char args[512], err[1024];
    snprintf(args, sizeof args, "-c1 -R 500 -d 3s --timeout 3s -q --json %s tcp://127.0.0.1:%d",
             json_path, port);
    int rc = run_loadgen(args, 15000, err, sizeof err, NULL);
    assert_int_equal(tproc_stop(fake, 3000), 128 + SIGTERM); /* SIGTERM's default action */
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);
    json_t *j = load_json(json_path);
    long long corrected = jint(j, "latency_us.p99"),
              uncorrected = jint(j, "latency_uncorrected_us.p99");
    print_message("freeze: p99 corrected %lld us, uncorrected %lld us, max %lld us\n", corrected,
                  uncorrected, jint(j, "latency_uncorrected_us.max"));
    /* Requests meant to go out during the freeze waited for it: the
     * corrected p99 shows the second, the uncorrected one sees one slow
     * request in ~1500 and hides it. */
    assert_true(corrected >= 800000);
    assert_true(uncorrected < 200000);
    assert_true(jint(j, "latency_uncorrected_us.max") >= 900000);
    assert_true(jint(j, "requests") > 1000);
    assert_no_errors(j);
    json_decref(j);
}

/* Accepts connections and never answers. */
static void silent_fake(int lfd)
{
    for (;;)
        accept(lfd, NULL, NULL); /* kept open, never read */
}

/* -R with a send interval that is not a whole number of microseconds
 * (45000/s over 64 connections: 1422.2 us) once spun forever on a deadline
 * rounded down to "now". The run must end on time with the rate kept. */
static void test_rate_fractional_interval(void **state)
{
    use_engine(state);
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[512], err[1024];
    int64_t wall;
    snprintf(args, sizeof args, "-c64 -d1s -R 45000 -q --json %s http://127.0.0.1:%d/", json_path,
             port);
    int rc = run_loadgen(args, 10000, err, sizeof err, &wall);
    stop_server(srv);
    if (rc != 0)
        fail_msg("loadgen exited %d after %lld ms: %s", rc, (long long)wall, err);
    json_t *j = load_json(json_path);
    assert_true(wall < 4000);
    assert_true(jint(j, "requests") > 1000);
    assert_no_errors(j);
    json_decref(j);
}

static void test_never_answers(void **state)
{
    use_engine(state);
    int port, lfd = fake_listen(&port);
    pid_t fake = tproc_fork();
    assert_true(fake >= 0);
    if (fake == 0)
        silent_fake(lfd);
    close(lfd);
    char args[512], err[1024];
    int64_t wall;
    snprintf(args, sizeof args, "-c2 -d2s --timeout 500ms -q --json %s http://127.0.0.1:%d/",
             json_path, port);
    int rc = run_loadgen(args, 15000, err, sizeof err, &wall);
    if (rc != 0) {
        tproc_stop(fake, 3000);
        fail_msg("loadgen exited %d: %s", rc, err);
    }
    json_t *j = load_json(json_path);
    print_message("silent server: %lld timeouts, run took %lld ms\n", jint(j, "errors.timeout"),
                  (long long)wall);
    assert_int_equal(jint(j, "requests"), 0);
    assert_true(jint(j, "errors.timeout") >= 4); /* 2 connections, a timeout every 0.5 s */
    assert_non_null(strstr(json_string_value(jget(j, "errors_first.timeout")), "500 ms"));
    assert_true(wall < 3500); /* the run ends on time */
    json_decref(j);

    /* A timeout longer than the run: no answer, no error, and the two
     * requests in flight since the start must still be reported (they
     * once vanished: "0 requests, 0 errors"). */
    snprintf(args, sizeof args, "-c2 -d1500ms --timeout 10s -q --json %s http://127.0.0.1:%d/",
             json_path, port);
    rc = run_loadgen(args, 15000, err, sizeof err, &wall);
    assert_int_equal(tproc_stop(fake, 3000), 128 + SIGTERM);
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);
    j = load_json(json_path);
    print_message("silent server, 10 s timeout: %lld unfinished, the oldest %lld us\n",
                  jint(j, "unfinished.requests"), jint(j, "unfinished.oldest_us"));
    assert_int_equal(jint(j, "requests"), 0);
    assert_int_equal(jint(j, "errors_total"), 0);
    assert_int_equal(jint(j, "unfinished.requests"), 2);
    assert_true(jint(j, "unfinished.oldest_us") >= 1400000);
    assert_true(wall < 5000);
    json_decref(j);
}

#define FAKE_KEYS 5

/* An /increment endpoint that answers 200 to two requests in three and 500
 * to the third, one connection at a time (pipelining allowed), and on
 * SIGTERM writes the sums it acknowledged and refused to `out`. */
static volatile sig_atomic_t fake_stop;

static void on_term(int sig)
{
    (void)sig;
    fake_stop = 1;
}

static void increment_fake(int lfd, int out)
{
    long long acked[FAKE_KEYS] = {0}, refused[FAKE_KEYS] = {0};
    long n200 = 0, n500 = 0, count = 0;
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: accept returns */
    sigaction(SIGTERM, &sa, NULL);
    while (!fake_stop) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        static char buf[1 << 16];
        size_t have = 0;
        ssize_t r;
        while (!fake_stop && (r = read(fd, buf + have, sizeof buf - have)) > 0) {
            have += (size_t)r;
            for (;;) {
                char *end = memmem(buf, have, "\r\n\r\n", 4);
                if (!end)
                    break;
                char *cl = memmem(buf, (size_t)(end - buf), "Content-Length: ", 16);
                size_t blen = cl ? (size_t)atoi(cl + 16) : 0;
                size_t total = (size_t)(end + 4 - buf) + blen;
                if (have < total)
                    break;
                char body[128];
                snprintf(body, sizeof body, "%.*s", (int)blen, end + 4);
                unsigned key = 0;
                long long value = 0;
                int ok = sscanf(body, "key=k%u&value=%lld", &key, &value) == 2 && key < FAKE_KEYS;
                const char *resp;
                if (ok && count++ % 3 != 2) {
                    acked[key] += value;
                    n200++;
                    resp = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                } else {
                    if (ok)
                        refused[key] += value;
                    n500++;
                    resp = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
                }
                net_write_all(fd, resp, strlen(resp));
                memmove(buf, buf + total, have - total);
                have -= total;
            }
        }
        close(fd);
    }
    FILE *f = fdopen(out, "w");
    fprintf(f, "%ld %ld\n", n200, n500);
    for (int k = 0; k < FAKE_KEYS; k++)
        fprintf(f, "%lld %lld\n", acked[k], refused[k]);
    fclose(f);
    _exit(0);
}

static void check_increment_run(const char *mode)
{
    int port, lfd = fake_listen(&port);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t fake = tproc_fork();
    assert_true(fake >= 0);
    if (fake == 0) {
        close(pfd[0]);
        increment_fake(lfd, pfd[1]);
    }
    close(lfd);
    close(pfd[1]);
    char args[512], err[1024];
    snprintf(args, sizeof args,
             "-c1 --pipeline 4 %s --increment %d -q --json %s http://127.0.0.1:%d/", mode,
             FAKE_KEYS, json_path, port);
    int rc = run_loadgen(args, 15000, err, sizeof err, NULL);
    kill(fake, SIGTERM); /* it writes its sums and exits */
    char text[1024];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof text - 1 && (n = read(pfd[0], text + len, sizeof text - 1 - len)) > 0)
        len += (size_t)n;
    text[len] = '\0';
    close(pfd[0]);
    assert_int_equal(tproc_wait(fake, 3000), 0);
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);

    json_t *j = load_json(json_path);
    long n200, n500;
    char *p = text;
    assert_int_equal(sscanf(p, "%ld %ld", &n200, &n500), 2);
    print_message("increment %s: fake answered %ld x 200, %ld x 500\n", mode, n200, n500);
    assert_true(n200 > 0 && n500 > 0);
    assert_int_equal(jint(j, "increment.acked_requests"), n200);
    assert_int_equal(jint(j, "increment.unacked_requests"), n500);
    /* Errors count in the measured window only: a timed run's last answers
     * (the drain, at most a pipeline's worth) fall after it. */
    if (strncmp(mode, "-n", 2) == 0)
        assert_int_equal(jint(j, "errors.status_5xx"), n500);
    else
        assert_true(jint(j, "errors.status_5xx") <= n500 &&
                    jint(j, "errors.status_5xx") >= n500 - 4);
    assert_int_equal(jint(j, "increment.keys"), FAKE_KEYS);
    for (int k = 0; k < FAKE_KEYS; k++) {
        long long acked, refused;
        p = strchr(p, '\n') + 1;
        assert_int_equal(sscanf(p, "%lld %lld", &acked, &refused), 2);
        char key[16];
        snprintf(key, sizeof key, "k%d", k);
        json_t *a = json_object_get(jget(j, "increment.acked"), key);
        json_t *u = json_object_get(jget(j, "increment.unacked"), key);
        assert_int_equal(a ? json_integer_value(a) : 0, acked);
        assert_int_equal(u ? json_integer_value(u) : 0, refused);
    }
    json_decref(j);
}

static void test_increment(void **state)
{
    use_engine(state);
    check_increment_run("-n 300");
    check_increment_run("-d 1s"); /* a timed run drains what is in flight */
}

/* ---- several agents, merged ---- */

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Start bin/loadgen ARGS in the background (tproc_fork: stopped by PID in
 * the teardown if the test fails). Returns its pid. */
static pid_t spawn_loadgen(const char *args)
{
    static char line[2048];
    char *argv[MAX_ARGS];
    loadgen_line(line, sizeof line, args);
    split(line, argv);
    pid_t pid = tproc_fork();
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid < 0)
        fail_msg("fork: %s", strerror(-pid));
    return pid;
}

/* The histogram in latency object `name` of j, with the JSON's exact min and
 * max (the buckets only bound them). */
static void read_hist(json_t *j, const char *name, hist_t *h)
{
    char err[256], path[64];
    snprintf(path, sizeof path, "%s.histogram", name);
    json_t *b64 = jget(j, path);
    if (hlog_decode_b64(json_string_value(b64), json_string_length(b64), h, err, sizeof err) < 0)
        fail_msg("%s: %s", path, err);
    snprintf(path, sizeof path, "%s.min", name);
    h->min = (uint64_t)jint(j, path);
    snprintf(path, sizeof path, "%s.max", name);
    h->max = (uint64_t)jint(j, path);
}

static int add_interval(void *ctx, double start, double len, const hist_t *h, char *err,
                        size_t errlen)
{
    (void)start, (void)len, (void)err, (void)errlen;
    hist_merge(ctx, h);
    return 0;
}

/* Three agents at a third of the rate each, started together with
 * --start-at, merged: the rate is the total one, the window is one, and the
 * merged percentiles are those of the union of the agents' histograms; the
 * merged interval logs hold the same latencies as the merged JSON. */
static void test_three_agents(void **state)
{
    use_engine(state);
    enum { AGENTS = 3, RATE = 1500, SECONDS = 3 };
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char base[64], args[1024], err[1024];
    snprintf(base, sizeof base, "/tmp/loadgen-merge-%d", (int)getpid());
    long long at = wall_ms() + 800;
    pid_t pids[AGENTS];
    for (int k = 0; k < AGENTS; k++) {
        snprintf(args, sizeof args,
                 "-c 4 -R %d -d %ds --start-at %lld -q --json %s-%d.json --hlog %s-%d.hlog "
                 "http://127.0.0.1:%d/",
                 RATE / AGENTS, SECONDS, at, base, k, base, k, port);
        pids[k] = spawn_loadgen(args);
    }
    for (int k = 0; k < AGENTS; k++)
        assert_int_equal(tproc_wait(pids[k], 30000), 0);
    stop_server(srv);

    snprintf(args, sizeof args, "merge %s.json %s-0.json %s-1.json %s-2.json", base, base, base,
             base);
    int rc = run_loadgen(args, 10000, err, sizeof err, NULL);
    if (rc != 0)
        fail_msg("merge exited %d: %s", rc, err);
    snprintf(args, sizeof args, "merge %s.hlog %s-0.hlog %s-1.hlog %s-2.hlog", base, base, base,
             base);
    rc = run_loadgen(args, 10000, err, sizeof err, NULL);
    if (rc != 0)
        fail_msg("merge of the logs exited %d: %s", rc, err);

    char path[128];
    snprintf(path, sizeof path, "%s.json", base);
    json_t *m = load_json(path);
    hist_t *uni = calloc(1, sizeof *uni), *h = calloc(1, sizeof *h), *lg = calloc(1, sizeof *lg);
    assert_true(uni && h && lg);
    long long requests = 0, first = 0, last = 0, unfinished = 0, oldest = 0;
    for (int k = 0; k < AGENTS; k++) {
        snprintf(path, sizeof path, "%s-%d.json", base, k);
        json_t *j = load_json(path);
        assert_no_errors(j);
        requests += jint(j, "requests");
        unfinished += jint(j, "unfinished.requests");
        if (jint(j, "unfinished.oldest_us") > oldest)
            oldest = jint(j, "unfinished.oldest_us");
        long long start = jint(j, "window_start_ms");
        first = k == 0 || start < first ? start : first;
        last = k == 0 || start > last ? start : last;
        read_hist(j, "latency_us", h);
        hist_merge(uni, h);
        json_decref(j);
        unlink(path);
    }
    /* --start-at: the windows opened together (the wait is on the wall
     * clock; what is left is the scheduler's delay). */
    if (last - first > 250)
        fail_msg("agents started %lld ms apart", last - first);
    assert_int_equal(jint(m, "requests"), requests);
    assert_int_equal(jint(m, "unfinished.requests"), unfinished); /* summed */
    assert_int_equal(jint(m, "unfinished.oldest_us"), oldest);    /* the longest */
    assert_int_equal(jint(m, "merged.agents"), AGENTS);
    double rps = json_number_value(jget(m, "rps"));
    double dur = json_number_value(jget(m, "duration_s"));
    if (rps < RATE * 0.95 || rps > RATE * 1.05)
        fail_msg("merged rate %.1f, want %d within 5%%", rps, RATE);
    if ((double)requests / dur < RATE * 0.9)
        fail_msg("%lld requests over the union of the windows (%.3f s): %.1f/s", requests, dur,
                 (double)requests / dur);

    /* The merged histogram is the union's, bucket by bucket, and so are
     * its percentiles. */
    read_hist(m, "latency_us", h);
    assert_memory_equal(h->counts, uni->counts, sizeof uni->counts);
    assert_int_equal(h->min, uni->min);
    assert_int_equal(h->max, uni->max);
    static const char *const names[] = {"p50", "p75", "p90", "p99", "p999", "p9999"};
    static const double pcts[] = {50, 75, 90, 99, 99.9, 99.99};
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "latency_us.%s", names[i]);
        assert_int_equal(jint(m, path), hist_percentile(uni, pcts[i]));
    }
    /* per_second adds up to the whole. */
    long long sum = 0;
    size_t i;
    json_t *e;
    json_array_foreach(jget(m, "per_second"), i, e)
    {
        sum += jint(e, "requests");
        if (jint(e, "requests") > 0 && jint(e, "p99_us") == 0)
            fail_msg("per_second[%zu]: %lld requests, no p99", i, jint(e, "requests"));
    }
    assert_int_equal(sum, requests);

    /* The merged logs hold the same latencies. */
    snprintf(path, sizeof path, "%s.hlog", base);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    double start;
    assert_int_equal(hlog_read(f, add_interval, lg, &start, err, sizeof err), 0);
    fclose(f);
    assert_memory_equal(lg->counts, uni->counts, sizeof uni->counts);
    assert_true(start >= (double)first / 1e3 - 0.01 && start <= (double)first / 1e3 + 0.01);

    unlink(path);
    snprintf(path, sizeof path, "%s.json", base);
    unlink(path);
    for (int k = 0; k < AGENTS; k++) {
        snprintf(path, sizeof path, "%s-%d.hlog", base, k);
        unlink(path);
    }
    json_decref(m);
    free(uni);
    free(h);
    free(lg);
}

/* Write text to path. */
static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* loadgen merge with bad input: one line on stderr naming the problem, exit
 * 2; an output that cannot be written: exit 1. */
static void test_merge_bad_input(void **state)
{
    (void)state;
    char d[64], a[96], b[96], c[96], args[512], err[1024];
    snprintf(d, sizeof d, "/tmp/loadgen-mergebad-%d", (int)getpid());
    snprintf(a, sizeof a, "%s-a.json", d);
    snprintf(b, sizeof b, "%s-b.json", d);
    snprintf(c, sizeof c, "%s-c.hlog", d);
    /* A minimal result whose histogram has 3 significant digits (made with
     * Python's zlib and struct from the format: the value 5). */
    static const char other[] = "HISTFAAAACJ42pNpmSzMwMDAxAABzFCaEURcm7yEwf4DRICTCQBaQgSU";
    char doc[1024];
    snprintf(doc, sizeof doc,
             "{\"requests\": 1, \"rps\": 1.0, \"duration_s\": 1.0, \"window_start_ms\": 0,"
             " \"config\": {}, \"per_second\": [],"
             " \"latency_us\": {\"histogram\": \"%s\"},"
             " \"latency_uncorrected_us\": {\"histogram\": \"%s\"}}",
             other, other);
    write_file(b, doc);
    /* A result of this loadgen's (an empty histogram of its parameters)
     * whose unfinished requests are not a count. */
    static const char empty[] = "HISTFAAAAB942pNpmSzMwMDAyAABTFAazL82eQmD/QeoCABVaQSH";
    char bad_unfinished[1024];
    snprintf(bad_unfinished, sizeof bad_unfinished,
             "{\"requests\": 0, \"rps\": 0.0, \"duration_s\": 1.0, \"window_start_ms\": 0,"
             " \"config\": {}, \"per_second\": [],"
             " \"latency_us\": {\"histogram\": \"%s\"},"
             " \"latency_uncorrected_us\": {\"histogram\": \"%s\"},"
             " \"unfinished\": {\"requests\": -1, \"oldest_us\": 0}}",
             empty, empty);
    write_file(c, "#[BaseTime: 0.000 (seconds since epoch)]\n0.000,1.000,0.005,HISTFAAA\n");
    struct {
        const char *content; /* of a; NULL: a is missing */
        const char *why;
        int rc;
    } cases[] = {
        {NULL, "No such file", 2},
        {"{\"requests\": ", "", 2},
        {"{\"requests\": 1}", "not a loadgen JSON result", 2},
        {"[1,2]", "", 2},
        {"hello", "", 2},
        {bad_unfinished, "unfinished", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        unlink(a);
        if (cases[i].content)
            write_file(a, cases[i].content);
        snprintf(args, sizeof args, "merge %s.out %s", d, a);
        int rc = run_loadgen(args, 5000, err, sizeof err, NULL);
        if (rc != cases[i].rc || !strstr(err, cases[i].why) ||
            strncmp(err, "loadgen: merge: ", 16) || strchr(err, '\n') != err + strlen(err) - 1)
            fail_msg("case %zu: exit %d, '%s'", i, rc, err);
    }
    static const struct {
        const char *args;
        const char *why;
    } more[] = {
        {"merge %s.out %s", "parameters differ"},   /* b: 3 digits */
        {"merge %s.out %s", "line 2"},              /* c: a corrupt histogram */
        {"merge %s.out", "usage"},                  /* no input */
        {"merge --bogus %s.out", "unknown option"}, /* a flag */
    };
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) {
        snprintf(args, sizeof args, more[i].args, d, i == 0 ? b : c);
        int rc = run_loadgen(args, 5000, err, sizeof err, NULL);
        if (rc != 2 || !strstr(err, more[i].why) || strchr(err, '\n') != err + strlen(err) - 1)
            fail_msg("'%s': exit %d, '%s'", args, rc, err);
    }
    /* JSON and a log together. */
    write_file(a, "{}");
    snprintf(args, sizeof args, "merge %s.out %s %s", d, a, c);
    assert_int_equal(run_loadgen(args, 5000, err, sizeof err, NULL), 2);
    assert_non_null(strstr(err, "cannot be merged together"));
    /* An output that cannot be written: exit 1. */
    write_file(c, "#[BaseTime: 0.000 (seconds since epoch)]\n"
                  "0.000,1.000,0.005,HISTFAAAACF42pNpmSzMwMDAxAABMJoRRFybvITB/gNEgJMJAFonBJM=\n");
    snprintf(args, sizeof args, "merge /nonexistent-dir/out.hlog %s", c);
    int rc = run_loadgen(args, 5000, err, sizeof err, NULL);
    if (rc != 1 || !strstr(err, "cannot write"))
        fail_msg("unwritable output: exit %d, '%s'", rc, err);
    /* --start-at in seconds, not milliseconds: refused. */
    assert_int_equal(
        run_loadgen("--start-at 1700000000 http://127.0.0.1:1/", 5000, err, sizeof err, NULL), 2);
    assert_non_null(strstr(err, "milliseconds"));
    unlink(a);
    unlink(b);
    unlink(c);
}

/* ---- the engines side by side ---- */

/* Does b have every key a has, at every depth, with values of the same
 * JSON type (numbers: integer and real alike)? Fails naming the first one
 * that differs. */
static void same_shape(json_t *a, json_t *b, const char *where)
{
    const char *k;
    json_t *v;
    char path[256];
    if (json_typeof(a) != json_typeof(b) && !(json_is_number(a) && json_is_number(b)))
        fail_msg("%s: of another type", where);
    json_object_foreach(a, k, v)
    {
        snprintf(path, sizeof path, "%s.%s", where, k);
        json_t *w = json_object_get(b, k);
        if (!w)
            fail_msg("%s: missing", path);
        same_shape(v, w, path);
    }
}

/* The same load through each engine against one server: the same counts
 * (-n), no errors, JSON documents of the same shape, each naming its
 * engine; pipelined with a STREAM whose answer spans many receives. */
static void test_engines_agree(void **state)
{
    (void)state;
    if (uring_unavailable()) {
        print_message("skipped: loadgen says %s\n", uring_unavailable());
        skip();
    }
    int port;
    pid_t srv = spawn_server("epoll", &port);
    static const char *const engines[] = {"epoll", "uring"};
    static const char *const loads[] = {
        "-c 8 -n 3000 http://127.0.0.1:%d/",
        "-c 4 -n 2000 --pipeline 8 --mix PING:10,STREAM~200000:1 tcp://127.0.0.1:%d",
    };
    char args[512], fmt[256], err[1024];
    for (size_t i = 0; i < sizeof loads / sizeof *loads; i++) {
        json_t *j[2];
        for (int e = 0; e < 2; e++) {
            engine = engines[e];
            snprintf(fmt, sizeof fmt, "-q --json %%s %s", loads[i]);
            snprintf(args, sizeof args, fmt, json_path, port);
            int rc = run_loadgen(args, 15000, err, sizeof err, NULL);
            if (rc != 0 || err[0])
                fail_msg("%s, %s: exit %d, '%s'", loads[i], engines[e], rc, err);
            j[e] = load_json(json_path);
            assert_no_errors(j[e]);
            assert_string_equal(json_string_value(jget(j[e], "config.engine")), engines[e]);
        }
        assert_int_equal(jint(j[0], "requests"), jint(j[1], "requests"));
        assert_int_equal(jint(j[0], "latency_us.count"), jint(j[1], "latency_us.count"));
        same_shape(j[0], j[1], "epoll's");
        same_shape(j[1], j[0], "uring's");
        json_decref(j[0]);
        json_decref(j[1]);
    }
    stop_server(srv);
}

/* bin/loadgen ARGS in a child where io_uring_setup fails with EPERM (the
 * seccomp filter Docker's default profile has), stderr into errbuf.
 * Returns its exit status. */
static int run_loadgen_no_uring(const char *args, char *errbuf, size_t errlen)
{
    char line[2048], log[64];
    char *argv[MAX_ARGS];
    loadgen_line(line, sizeof line, args);
    split(line, argv);
    snprintf(log, sizeof log, "/tmp/loadgen-nouring-%d.err", (int)getpid());
    pid_t pid = tproc_fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(-pid));
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {.len = sizeof f / sizeof *f, .filter = f};
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || dup2(fd, 2) < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
            _exit(126);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    int rc = tproc_wait(pid, 15000);
    FILE *fp = fopen(log, "r");
    size_t n = fp ? fread(errbuf, 1, errlen - 1, fp) : 0;
    errbuf[n] = '\0';
    if (fp)
        fclose(fp);
    unlink(log);
    return rc;
}

/* Where the kernel refuses io_uring, --engine uring runs the epoll engine
 * and says so once on stderr; the JSON names the engine that ran. */
static void test_uring_refused(void **state)
{
    (void)state;
#ifndef __x86_64__
    skip(); /* the filter above is written for x86-64's system call numbers */
#endif
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[512], err[1024];
    engine = "uring";
    snprintf(args, sizeof args, "-t 2 -c 4 -d 300ms -q --json %s http://127.0.0.1:%d/", json_path,
             port);
    int rc = run_loadgen_no_uring(args, err, sizeof err);
    stop_server(srv);
    if (rc == 126)
        fail_msg("could not install the seccomp filter");
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);
    static const char want[] = "loadgen: io_uring unavailable (io_uring_setup: Operation not "
                               "permitted): using the epoll engine\n";
    if (strcmp(err, want) != 0)
        fail_msg("stderr '%s', want '%s'", err, want);
    json_t *j = load_json(json_path);
    assert_string_equal(json_string_value(jget(j, "config.engine")), "epoll");
    assert_true(jint(j, "requests") > 100);
    assert_no_errors(j);
    json_decref(j);
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    (void)state;
    char err[1024];
    static const char *bad[] = {"-c 0 http://127.0.0.1:1/",
                                "--bogus http://127.0.0.1:1/",
                                "htp://127.0.0.1/",
                                "http://127.0.0.1:1/ -d 1x",
                                "",
                                "--engine io_uring http://127.0.0.1:1/"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = run_loadgen(bad[i], 5000, err, sizeof err, NULL);
        if (rc != 2)
            fail_msg("'%s': exit %d, want 2", bad[i], rc);
        char *nl = strchr(err, '\n');
        if (!nl || nl[1] != '\0' || strncmp(err, "loadgen: ", 9) != 0)
            fail_msg("'%s': not one error line: '%s'", bad[i], err);
    }
    /* A port nobody listens on: one line, exit 2. */
    int port, lfd = fake_listen(&port);
    close(lfd);
    char args[128];
    snprintf(args, sizeof args, "-d 1s http://127.0.0.1:%d/", port);
    int64_t wall;
    assert_int_equal(run_loadgen(args, 5000, err, sizeof err, &wall), 2);
    assert_non_null(strstr(err, "cannot reach"));
    assert_true(wall < 3000);
}

/* --chat: every round reaches every member, the sender included; the
 * server's CPU per delivery is there with --server-pid. */
static void test_chat(void **state)
{
    (void)state;
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[512], err[1024];
    snprintf(args, sizeof args,
             "--chat 3:5 -d500ms -q --json %s --server-pid %d tcp://127.0.0.1:%d", json_path,
             (int)srv, port);
    int rc = run_loadgen(args, 10000, err, sizeof err, NULL);
    stop_server(srv);
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);
    json_t *j = load_json(json_path);
    long long rounds = jint(j, "chat.rounds"), deliveries = jint(j, "chat.deliveries");
    assert_true(rounds > 10);
    assert_int_equal(deliveries, rounds * 5);
    assert_int_equal(jint(j, "chat.timeouts"), 0);
    assert_int_equal(jint(j, "chat.errors"), 0);
    assert_true(jint(j, "chat.latency_us.p99") > 0);
    assert_true(json_real_value(jget(j, "chat.server_cpu_us_per_delivery")) > 0);
    json_decref(j);
    /* Against a design without the chat: it says why and fails. */
    srv = spawn_server("iterative", &port);
    snprintf(args, sizeof args, "--chat 1:1 -d200ms -q tcp://127.0.0.1:%d", port);
    rc = run_loadgen(args, 15000, err, sizeof err, NULL);
    stop_server(srv);
    assert_int_equal(rc, 1);
    if (!strstr(err, "ERR chat not supported"))
        fail_msg("loadgen said: %s", err);
}

/* loadgen says how busy its CPUs were over the window, whoever kept them
 * busy: pinned beside a process that spins, a light load still finds its
 * one CPU full (the bench then calls the run client-bound), while its own
 * CPU stays low. */
static void test_cpus_busy(void **state)
{
    (void)state;
    int port;
    pid_t srv = spawn_server("epoll", &port); /* before the pinning: the server keeps every CPU */
    cpu_set_t all, one;
    assert_int_equal(sched_getaffinity(0, sizeof all, &all), 0);
    int cpu = 0;
    while (!CPU_ISSET(cpu, &all))
        cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0);
    pid_t spin = tproc_fork(); /* pinned with this process */
    if (spin == 0) {
        alarm(30); /* bounded even if nobody stops it */
        for (volatile unsigned long i = 0;; i++)
            ;
    }
    char args[512], err[1024];
    snprintf(args, sizeof args, "-c1 -R 200 -d1s -q --json %s http://127.0.0.1:%d/", json_path,
             port);
    int rc = spin > 0 ? run_loadgen(args, 10000, err, sizeof err, NULL) : -1;
    (void)sched_setaffinity(0, sizeof all, &all); /* back, whatever happened: checked below */
    if (spin > 0)
        tproc_stop(spin, 2000);
    assert_true(spin > 0);
    assert_int_equal(rc, 0);
    json_t *j = load_json(json_path);
    double dur = json_real_value(jget(j, "duration_s"));
    double own = json_real_value(jget(j, "loadgen_cpu.user_s")) +
                 json_real_value(jget(j, "loadgen_cpu.system_s"));
    double busy = json_real_value(jget(j, "loadgen_cpu.cpus_busy_s"));
    assert_int_equal(jint(j, "loadgen_cpu.cpus"), 1);
    if (!(busy >= 0.9 * dur && busy <= 1.05 * dur + 0.02 && own < 0.5 * dur))
        fail_msg("pinned beside a spinner: its CPU busy %.2f s, loadgen's own %.2f s, of %.2f s",
                 busy, own, dur);
    json_decref(j);

    /* Unpinned: every CPU it may use, never busier than all of them. */
    assert_int_equal(run_loadgen(args, 10000, err, sizeof err, NULL), 0);
    j = load_json(json_path);
    dur = json_real_value(jget(j, "duration_s"));
    busy = json_real_value(jget(j, "loadgen_cpu.cpus_busy_s"));
    assert_int_equal(jint(j, "loadgen_cpu.cpus"), CPU_COUNT(&all));
    assert_true(busy >= 0 && busy <= CPU_COUNT(&all) * (1.05 * dur + 0.02));
    json_decref(j);
    stop_server(srv);
}

/* A test run once with each engine, its state the engine's name. */
#define BOTH_ENGINES(f)                                                                            \
    {#f " epoll", f, NULL, stop_children, (void *)"epoll"},                                        \
    {                                                                                              \
#f " uring", f, NULL, stop_children, (void *)"uring"                                       \
    }

/* Read calls and bytes read by process pid so far (/proc/PID/io). */
static void proc_reads(pid_t pid, long long *calls, long long *bytes)
{
    char path[64], key[32];
    long long v;
    snprintf(path, sizeof path, "/proc/%d/io", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("%s: %s", path, strerror(errno));
    *calls = *bytes = -1;
    while (fscanf(f, "%31[^:]: %lld\n", key, &v) == 2) {
        if (strcmp(key, "syscr") == 0)
            *calls = v;
        else if (strcmp(key, "rchar") == 0)
            *bytes = v;
    }
    fclose(f);
    assert_true(*calls >= 0 && *bytes >= 0);
}

/* A long answer is read in large reads, not in the 16 KiB a connection's
 * buffer starts with (engine_epoll.c, READ_MAX): 64 reads per 1 MiB
 * answer were a fifth of loadgen's CPU. Measured mid-run from /proc, over
 * a second of 1 MiB answers. */
static void test_long_answers_large_reads(void **state)
{
    (void)state;
    engine = "epoll";
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[256];
    snprintf(args, sizeof args, "-c1 -d3s -q http://127.0.0.1:%d/stream?n=1048576", port);
    pid_t lg = spawn_loadgen(args);
    long long c0, b0, c1, b1;
    tsleep_ms(1000);
    proc_reads(lg, &c0, &b0);
    tsleep_ms(1000);
    proc_reads(lg, &c1, &b1);
    assert_int_equal(tproc_wait(lg, 10000), 0);
    stop_server(srv);
    assert_true(c1 > c0);
    long long per = (b1 - b0) / (c1 - c0);
    print_message("loadgen read %lld bytes a read (%lld reads)\n", per, c1 - c0);
    assert_true(per >= 24 << 10);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bad_input, stop_children),
        BOTH_ENGINES(test_epoll_http),
        BOTH_ENGINES(test_epoll_line),
        BOTH_ENGINES(test_scenarios),
        BOTH_ENGINES(test_freeze_corrected),
        BOTH_ENGINES(test_never_answers),
        BOTH_ENGINES(test_rate_fractional_interval),
        BOTH_ENGINES(test_increment),
        BOTH_ENGINES(test_three_agents),
        cmocka_unit_test_teardown(test_engines_agree, stop_children),
        cmocka_unit_test_teardown(test_uring_refused, stop_children),
        cmocka_unit_test_teardown(test_merge_bad_input, stop_children),
        cmocka_unit_test_teardown(test_chat, stop_children),
        cmocka_unit_test_teardown(test_cpus_busy, stop_children),
        cmocka_unit_test_teardown(test_long_answers_large_reads, stop_children),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
