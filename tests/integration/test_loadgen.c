/* bin/loadgen as a real process: against the epoll server in both protocols,
 * against stub servers that freeze once, never answer, or count increments,
 * and with bad input. Every process started here is stopped by its PID and
 * every wait is bounded.
 *
 * Servers are started and stopped with tests/lib's tproc; the load generator
 * and the stub servers (forked children of this process) are tracked here,
 * so a failing test still stops them by PID in its teardown. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/net.h"
#include "../lib/tlib.h"

#define MAX_ARGS 64

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Every process a test starts, so that a failing test still stops them
 * (by PID) in its teardown. */
static pid_t children[16];

static void track(pid_t pid)
{
    for (size_t i = 0; i < sizeof children / sizeof *children; i++)
        if (!children[i]) {
            children[i] = pid;
            return;
        }
}

static void untrack(pid_t pid)
{
    for (size_t i = 0; i < sizeof children / sizeof *children; i++)
        if (children[i] == pid)
            children[i] = 0;
}

/* Wait for pid up to timeout_ms, then kill it. Returns its exit status, -1
 * when it died of a signal, -2 when it had to be killed. */
static int wait_pid(pid_t pid, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            untrack(pid);
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        }
        if (r < 0)
            return -1;
        if (now_ms() >= until) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            untrack(pid);
            return -2;
        }
        usleep(5000);
    }
}

static void stop_pid(pid_t pid)
{
    kill(pid, SIGTERM);
    if (wait_pid(pid, 3000) == -2)
        print_message("process %d ignored SIGTERM and was killed\n", (int)pid);
}

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

/* Run bin/loadgen ARGS with a deadline; its stderr goes to errbuf. Returns
 * its exit status (-1 when killed) and the wall time in *wall_ms. */
static int run_loadgen(const char *args, int timeout_ms, char *errbuf, size_t errlen, int64_t *wall_ms)
{
    char line[2048], path[256];
    char *argv[MAX_ARGS];
    snprintf(path, sizeof path, "%s", tproc_bin("loadgen"));
    snprintf(line, sizeof line, "%s %s", path, args);
    split(line, argv);
    char errpath[] = "/tmp/loadgen-test-err-XXXXXX";
    int efd = mkstemp(errpath);
    assert_true(efd >= 0);
    int64_t t0 = now_ms();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int dn = open("/dev/null", O_WRONLY);
        dup2(dn, 1);
        dup2(efd, 2);
        execv(path, argv);
        _exit(127);
    }
    track(pid);
    int rc = wait_pid(pid, timeout_ms);
    if (wall_ms)
        *wall_ms = now_ms() - t0;
    if (errbuf) {
        ssize_t n = pread(efd, errbuf, errlen - 1, 0);
        errbuf[n > 0 ? n : 0] = '\0';
    }
    close(efd);
    unlink(errpath);
    return rc;
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
    for (size_t i = 0; i < sizeof children / sizeof *children; i++)
        if (children[i])
            stop_pid(children[i]);
    return 0;
}

/* A listening socket on a free port for a stub; returns the fd. */
static int stub_listen(int *port)
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
    (void)state;
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
    assert_int_equal(jint(j, "config.threads"), 2);
    assert_true(json_array_size(jget(j, "per_second")) >= 1);
    assert_true(json_real_value(jget(j, "server.user_s")) + json_real_value(jget(j, "server.system_s")) > 0);
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
    json_decref(j);
    stop_server(srv);
}

static void test_epoll_line(void **state)
{
    (void)state;
    int port;
    pid_t srv = spawn_server("epoll", &port);
    char args[512], err[1024];
    snprintf(args, sizeof args,
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
    (void)state;
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

/* ---- stubs ---- */

/* A line-protocol server that answers PING with PONG, one connection at a
 * time, and stalls for 1 s once, at its 300th answer. */
static void freeze_stub(int lfd)
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
    (void)state;
    int port, lfd = stub_listen(&port);
    pid_t stub = fork();
    assert_true(stub >= 0);
    if (stub == 0)
        freeze_stub(lfd);
    track(stub);
    close(lfd);
    char args[512], err[1024];
    snprintf(args, sizeof args, "-c1 -R 500 -d 3s --timeout 3s -q --json %s tcp://127.0.0.1:%d",
             json_path, port);
    int rc = run_loadgen(args, 15000, err, sizeof err, NULL);
    stop_pid(stub);
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);
    json_t *j = load_json(json_path);
    long long corrected = jint(j, "latency_us.p99"), uncorrected = jint(j, "latency_uncorrected_us.p99");
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
static void silent_stub(int lfd)
{
    for (;;)
        accept(lfd, NULL, NULL); /* kept open, never read */
}

/* -R with a send interval that is not a whole number of microseconds
 * (45000/s over 64 connections: 1422.2 us) once spun forever on a deadline
 * rounded down to "now". The run must end on time with the rate kept. */
static void test_rate_fractional_interval(void **state)
{
    (void)state;
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
    (void)state;
    int port, lfd = stub_listen(&port);
    pid_t stub = fork();
    assert_true(stub >= 0);
    if (stub == 0)
        silent_stub(lfd);
    track(stub);
    close(lfd);
    char args[512], err[1024];
    int64_t wall;
    snprintf(args, sizeof args, "-c2 -d2s --timeout 500ms -q --json %s http://127.0.0.1:%d/",
             json_path, port);
    int rc = run_loadgen(args, 15000, err, sizeof err, &wall);
    stop_pid(stub);
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);
    json_t *j = load_json(json_path);
    print_message("silent server: %lld timeouts, run took %lld ms\n", jint(j, "errors.timeout"),
                  (long long)wall);
    assert_int_equal(jint(j, "requests"), 0);
    assert_true(jint(j, "errors.timeout") >= 4); /* 2 connections, a timeout every 0.5 s */
    assert_non_null(strstr(json_string_value(jget(j, "errors_first.timeout")), "500 ms"));
    assert_true(wall < 3500); /* the run ends on time */
    json_decref(j);
}

#define STUB_KEYS 5

/* An /increment endpoint that answers 200 to two requests in three and 500
 * to the third, one connection at a time (pipelining allowed), and on
 * SIGTERM writes the sums it acknowledged and refused to `out`. */
static volatile sig_atomic_t stub_stop;

static void on_term(int sig)
{
    (void)sig;
    stub_stop = 1;
}

static void increment_stub(int lfd, int out)
{
    long long acked[STUB_KEYS] = {0}, refused[STUB_KEYS] = {0};
    long n200 = 0, n500 = 0, count = 0;
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: accept returns */
    sigaction(SIGTERM, &sa, NULL);
    while (!stub_stop) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        static char buf[1 << 16];
        size_t have = 0;
        ssize_t r;
        while (!stub_stop && (r = read(fd, buf + have, sizeof buf - have)) > 0) {
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
                int ok = sscanf(body, "key=k%u&value=%lld", &key, &value) == 2 && key < STUB_KEYS;
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
    for (int k = 0; k < STUB_KEYS; k++)
        fprintf(f, "%lld %lld\n", acked[k], refused[k]);
    fclose(f);
    _exit(0);
}

static void check_increment_run(const char *mode)
{
    int port, lfd = stub_listen(&port);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t stub = fork();
    assert_true(stub >= 0);
    if (stub == 0) {
        close(pfd[0]);
        increment_stub(lfd, pfd[1]);
    }
    track(stub);
    close(lfd);
    close(pfd[1]);
    char args[512], err[1024];
    snprintf(args, sizeof args, "-c1 --pipeline 4 %s --increment %d -q --json %s http://127.0.0.1:%d/",
             mode, STUB_KEYS, json_path, port);
    int rc = run_loadgen(args, 15000, err, sizeof err, NULL);
    kill(stub, SIGTERM);
    char text[1024];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof text - 1 && (n = read(pfd[0], text + len, sizeof text - 1 - len)) > 0)
        len += (size_t)n;
    text[len] = '\0';
    close(pfd[0]);
    wait_pid(stub, 3000);
    if (rc != 0)
        fail_msg("loadgen exited %d: %s", rc, err);

    json_t *j = load_json(json_path);
    long n200, n500;
    char *p = text;
    assert_int_equal(sscanf(p, "%ld %ld", &n200, &n500), 2);
    print_message("increment %s: stub answered %ld x 200, %ld x 500\n", mode, n200, n500);
    assert_true(n200 > 0 && n500 > 0);
    assert_int_equal(jint(j, "increment.acked_requests"), n200);
    assert_int_equal(jint(j, "increment.unacked_requests"), n500);
    /* Errors count in the measured window only: a timed run's last answers
     * (the drain, at most a pipeline's worth) fall after it. */
    if (strncmp(mode, "-n", 2) == 0)
        assert_int_equal(jint(j, "errors.status_5xx"), n500);
    else
        assert_true(jint(j, "errors.status_5xx") <= n500 && jint(j, "errors.status_5xx") >= n500 - 4);
    assert_int_equal(jint(j, "increment.keys"), STUB_KEYS);
    for (int k = 0; k < STUB_KEYS; k++) {
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
    (void)state;
    check_increment_run("-n 300");
    check_increment_run("-d 1s"); /* a timed run drains what is in flight */
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    (void)state;
    char err[1024];
    static const char *bad[] = {"-c 0 http://127.0.0.1:1/", "--bogus http://127.0.0.1:1/",
                                "htp://127.0.0.1/", "http://127.0.0.1:1/ -d 1x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = run_loadgen(bad[i], 5000, err, sizeof err, NULL);
        if (rc != 2)
            fail_msg("'%s': exit %d, want 2", bad[i], rc);
        char *nl = strchr(err, '\n');
        if (!nl || nl[1] != '\0' || strncmp(err, "loadgen: ", 9) != 0)
            fail_msg("'%s': not one error line: '%s'", bad[i], err);
    }
    /* A port nobody listens on: one line, exit 2. */
    int port, lfd = stub_listen(&port);
    close(lfd);
    char args[128];
    snprintf(args, sizeof args, "-d 1s http://127.0.0.1:%d/", port);
    int64_t wall;
    assert_int_equal(run_loadgen(args, 5000, err, sizeof err, &wall), 2);
    assert_non_null(strstr(err, "cannot reach"));
    assert_true(wall < 3000);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bad_input, stop_children),
        cmocka_unit_test_teardown(test_epoll_http, stop_children),
        cmocka_unit_test_teardown(test_epoll_line, stop_children),
        cmocka_unit_test_teardown(test_scenarios, stop_children),
        cmocka_unit_test_teardown(test_freeze_corrected, stop_children),
        cmocka_unit_test_teardown(test_never_answers, stop_children),
        cmocka_unit_test_teardown(test_rate_fractional_interval, stop_children),
        cmocka_unit_test_teardown(test_increment, stop_children),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
