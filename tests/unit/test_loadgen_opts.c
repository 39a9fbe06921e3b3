/* The load generator's command line: defaults, every kind of value, and the
 * one-line errors for bad input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../loadgen/opts.h"
#include "../../loadgen/workload.h"

/* Parse a space-separated command line (no quoting: '~' stands for a space). */
static int parse(lg_opts_t *o, const char *line, char *err, size_t errlen)
{
    static char store[4096];
    char *argv[64];
    int argc = 0;
    snprintf(store, sizeof store, "loadgen %s", line);
    for (char *t = strtok(store, " "); t && argc < 63; t = strtok(NULL, " ")) {
        for (char *p = t; *p; p++)
            if (*p == '~')
                *p = ' ';
        argv[argc++] = t;
    }
    argv[argc] = NULL;
    err[0] = '\0';
    return opts_parse(o, argc, argv, err, errlen);
}

static void test_defaults(void **state)
{
    (void)state;
    lg_opts_t o;
    char err[256];
    assert_int_equal(parse(&o, "http://127.0.0.1:8090/", err, sizeof err), 0);
    assert_int_equal(o.proto, LG_HTTP);
    assert_string_equal(o.host, "127.0.0.1");
    assert_int_equal(o.port, 8090);
    assert_int_equal(o.npaths, 1);
    assert_string_equal(o.paths[0], "/");
    assert_int_equal(o.connections, 10);
    assert_int_equal(o.threads, 1);
    assert_int_equal(o.duration_us, 10000000);
    assert_int_equal(o.pipeline, 1);
    assert_int_equal(o.timeout_ms, 2000);
    assert_string_equal(o.method, "GET");
    assert_true(o.rate == 0);
    assert_int_equal(o.engine, LG_ENGINE_EPOLL);
    opts_free(&o);
}

static void test_values(void **state)
{
    (void)state;
    lg_opts_t o;
    char err[256];
    assert_int_equal(parse(&o,
                           "-t2 -c64 -d 500ms --warmup 1s -R 1000 --pipeline 16 --timeout 250ms "
                           "-m POST -H X-A:~1 -H Accept:~*/* --body hello --path /ping "
                           "--path /burn?n=10 --json out.json --hgrm out.hgrm -q --seed 7 "
                           "--hlog out.hlog --start-at 1700000000123 "
                           "http://localhost:9000/x?y=1",
                           err, sizeof err),
                     0);
    assert_int_equal(o.threads, 2);
    assert_int_equal(o.connections, 64);
    assert_string_equal(o.hlog_path, "out.hlog");
    assert_int_equal(o.start_at_ms, 1700000000123LL);
    assert_int_equal(o.duration_us, 500000);
    assert_int_equal(o.warmup_us, 1000000);
    assert_true(o.rate == 1000);
    assert_int_equal(o.pipeline, 16);
    assert_int_equal(o.timeout_ms, 250);
    assert_string_equal(o.method, "POST");
    assert_int_equal(o.nheaders, 2);
    assert_string_equal(o.headers[0], "X-A: 1");
    assert_int_equal(o.body_len, 5);
    assert_int_equal(o.npaths, 3);
    assert_string_equal(o.paths[0], "/x?y=1");
    assert_string_equal(o.paths[2], "/burn?n=10");
    assert_string_equal(o.host, "localhost");
    assert_int_equal(o.port, 9000);
    assert_string_equal(o.json_path, "out.json");
    assert_int_equal(o.quiet, 1);
    assert_int_equal(o.seed, 7);
    opts_free(&o);

    /* -n alone: no duration bound, the count ends the run. */
    assert_int_equal(parse(&o, "-n 1000 tcp://127.0.0.1:1", err, sizeof err), 0);
    assert_int_equal(o.requests, 1000);
    assert_int_equal(o.duration_us, 0);
    assert_int_equal(o.proto, LG_LINE);
    assert_int_equal(o.nmix, 1);
    assert_string_equal(o.mix[0].cmd, "PING");
    opts_free(&o);

    /* More threads than connections: one connection each. */
    assert_int_equal(parse(&o, "-t 8 -c 3 http://h:1/", err, sizeof err), 0);
    assert_int_equal(o.threads, 3);
    opts_free(&o);

    assert_int_equal(parse(&o,
                           "--idle 100 --slowloris 5 --slow-readers 2 --slow-read-rate 1024 "
                           "--server-pid 1 --increment 50 --increment-max 7 --increment-positive "
                           "http://h:1/",
                           err, sizeof err),
                     0);
    assert_int_equal(o.idle, 100);
    assert_int_equal(o.slowloris, 5);
    assert_int_equal(o.slow_readers, 2);
    assert_int_equal(o.slow_read_bps, 1024);
    assert_int_equal(o.server_pid, 1);
    assert_int_equal(o.increment_keys, 50);
    assert_int_equal(o.increment_max, 7);
    assert_int_equal(o.increment_positive, 1);
    opts_free(&o);

    assert_int_equal(parse(&o, "--engine uring http://h:1/", err, sizeof err), 0);
    assert_int_equal(o.engine, LG_ENGINE_URING);
    opts_free(&o);
    assert_int_equal(parse(&o, "--engine=epoll http://h:1/", err, sizeof err), 0);
    assert_int_equal(o.engine, LG_ENGINE_EPOLL);
    opts_free(&o);
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t us;
    } ok[] = {{"10s", 10000000},    {"10", 10000000},  {"500ms", 500000}, {"2m", 120000000},
              {"1h", 3600000000LL}, {"1.5s", 1500000}, {"250us", 250},    {"0", 0}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        int64_t us = -1;
        assert_int_equal(opts_parse_duration(ok[i].s, &us), 0);
        assert_int_equal(us, ok[i].us);
    }
    static const char *bad[] = {"", "s", "10x", "-1s", "ten", "10 s", "1e99h"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int64_t us;
        assert_int_equal(opts_parse_duration(bad[i], &us), -EINVAL);
    }
}

static void test_targets(void **state)
{
    (void)state;
    lg_opts_t o;
    char err[256];
    static const char *good[] = {"http://127.0.0.1:8090/",
                                 "http://127.0.0.1:8090",
                                 "http://host/a/b",
                                 "tcp://127.0.0.1:8090",
                                 "tcp://h:1/",
                                 "http://[::1]:80/x",
                                 "HTTP://H:1/"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        memset(&o, 0, sizeof o);
        if (opts_parse_target(&o, good[i], err, sizeof err) != 0)
            fail_msg("%s: %s", good[i], err);
    }
    memset(&o, 0, sizeof o);
    opts_parse_target(&o, "http://[::1]:80/x", err, sizeof err);
    assert_string_equal(o.host, "::1");
    assert_int_equal(o.port, 80);
    memset(&o, 0, sizeof o);
    opts_parse_target(&o, "http://127.0.0.1:8090", err, sizeof err);
    assert_string_equal(o.paths[0], "/");

    static const char *bad[] = {"",
                                "127.0.0.1:80",
                                "ftp://h/",
                                "http://",
                                "http://:80/",
                                "http://h:0/",
                                "http://h:65536/",
                                "http://h:80x/",
                                "tcp://h:1/path",
                                "http://h:1/a b",
                                "http://[::1/"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&o, 0, sizeof o);
        err[0] = '\0';
        if (opts_parse_target(&o, bad[i], err, sizeof err) != -EINVAL)
            fail_msg("'%s' accepted", bad[i]);
        assert_non_null(strstr(err, "bad target"));
    }
}

static void test_mix(void **state)
{
    (void)state;
    lg_opts_t o;
    char err[256];
    memset(&o, 0, sizeof o);
    assert_int_equal(opts_parse_mix(&o, "PING:80,BURN 1000:10,WAIT 1:10", err, sizeof err), 0);
    assert_int_equal(o.nmix, 3);
    assert_string_equal(o.mix[1].cmd, "BURN 1000");
    assert_int_equal(o.mix[1].weight, 10);
    assert_int_equal(opts_parse_mix(&o, "STREAM 100, PING", err, sizeof err), 0);
    assert_int_equal(o.nmix, 2);
    assert_int_equal(o.mix[0].weight, 1);
    assert_string_equal(o.mix[1].cmd, "PING");
    assert_int_equal(opts_parse_mix(&o, "PING:0,WAIT 1:3", err, sizeof err), 0);
    assert_int_equal(o.nmix, 1); /* weight 0 drops the entry */
    static const char *bad[] = {"",         "HELLO:1",         "PING:x",       "PING:-1",
                                "BURN:1",   "WAIT 99999999:1", "PING,,WAIT 1", "PING:0",
                                "SAY hi:1", "JOIN r:1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (opts_parse_mix(&o, bad[i], err, sizeof err) != -EINVAL)
            fail_msg("mix '%s' accepted", bad[i]);

    /* --chat ROOMS:MEMBERS, on the line protocol only. */
    assert_int_equal(parse(&o, "--chat 3:7 --chat-bytes 100 tcp://h:1", err, sizeof err), 0);
    assert_int_equal(o.chat_rooms, 3);
    assert_int_equal(o.chat_members, 7);
    assert_int_equal(o.chat_bytes, 100);
    static const char *bad_chat[] = {"--chat 0:5 tcp://h:1", "--chat 5 tcp://h:1",
                                     "--chat 2000:1000 tcp://h:1", "--chat 1:1 http://h:1/",
                                     "--chat 1:2x tcp://h:1"};
    for (size_t i = 0; i < sizeof bad_chat / sizeof *bad_chat; i++)
        if (parse(&o, bad_chat[i], err, sizeof err) != -EINVAL)
            fail_msg("'%s' accepted", bad_chat[i]);

    /* The weighted pick follows the weights. */
    assert_int_equal(parse(&o, "--mix PING:3,WAIT~1:1 tcp://h:1", err, sizeof err), 0);
    lg_workload_t w;
    assert_int_equal(workload_build(&w, &o, err, sizeof err), 0);
    unsigned hits[2] = {0, 0};
    for (uint64_t i = 0; i < 4000; i++)
        hits[workload_pick(&w, i, i * 2654435761u)]++;
    assert_int_equal(hits[0], 3000);
    assert_int_equal(hits[1], 1000);
    assert_int_equal(w.v[1].len, 7);
    assert_memory_equal(w.v[1].bytes, "WAIT 1\n", 7);
    workload_free(&w);
    opts_free(&o);
}

static void test_errors(void **state)
{
    (void)state;
    lg_opts_t o;
    char err[256];
    static const struct {
        const char *line;
        const char *msg;
    } bad[] = {
        {"-c 0 http://h:1/", "bad value '0' for -c"},
        {"-c x http://h:1/", "for -c"},
        {"--connections=0 http://h:1/", "for --connections"},
        {"-t 0 http://h:1/", "for -t"},
        {"-d 0 http://h:1/", "for -d"},
        {"-d 10y http://h:1/", "for -d"},
        {"-R 0 http://h:1/", "for -R"},
        {"--pipeline 0 http://h:1/", "for --pipeline"},
        {"--timeout 0 http://h:1/", "for --timeout"},
        {"--bogus http://h:1/", "unknown option '--bogus'"},
        {"-x http://h:1/", "unknown option"},
        {"http://h:1/", NULL},
        {"", "missing TARGET"},
        {"http://h:1/ http://h:2/", "one TARGET"},
        {"-c", "needs a value"},
        {"ftp://h/", "bad target"},
        {"--mix PING tcp://h:1/x", "bad target"},
        {"--mix PING http://h:1/", "--mix needs a tcp:// target"},
        {"-H X:1 tcp://h:1", "need an http:// target"},
        {"-H NoColon http://h:1/", "for -H"},
        {"--path nope http://h:1/", "for --path"},
        {"--increment 10 --body x http://h:1/", "--increment makes its own"},
        {"--body @/nonexistent/file http://h:1/", "cannot read --body file"},
        {"--server-pid 0 http://h:1/", "for --server-pid"},
        {"--start-at 1700000000 http://h:1/", "milliseconds since the epoch"}, /* seconds */
        {"--start-at -5 http://h:1/", "for --start-at"},
        {"--start-at soon http://h:1/", "for --start-at"},
        {"--hlog http://h:1/", "missing TARGET"},
        {"--engine io_uring http://h:1/",
         "bad value 'io_uring' for --engine: expected epoll or uring"},
        {"--engine http://h:1/", "for --engine"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = parse(&o, bad[i].line, err, sizeof err);
        if (!bad[i].msg) {
            assert_int_equal(rc, 0);
            opts_free(&o);
            continue;
        }
        if (rc != -EINVAL)
            fail_msg("'%s' accepted", bad[i].line);
        if (!strstr(err, bad[i].msg))
            fail_msg("'%s': error '%s' lacks '%s'", bad[i].line, err, bad[i].msg);
        assert_null(strchr(err, '\n')); /* one line */
    }
}

static void test_body_file(void **state)
{
    (void)state;
    char path[] = "/tmp/loadgen-body-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "a=1\nb=2", 7), 7);
    close(fd);
    char line[128], err[256];
    snprintf(line, sizeof line, "-m POST --body @%s http://h:1/", path);
    lg_opts_t o;
    assert_int_equal(parse(&o, line, err, sizeof err), 0);
    assert_int_equal(o.body_len, 7);
    assert_memory_equal(o.body, "a=1\nb=2", 7);
    lg_workload_t w;
    assert_int_equal(workload_build(&w, &o, err, sizeof err), 0);
    const char *want = "POST / HTTP/1.1\r\nHost: h:1\r\nContent-Length: 7\r\n\r\na=1\nb=2";
    assert_int_equal(w.v[0].len, strlen(want));
    assert_memory_equal(w.v[0].bytes, want, strlen(want));
    workload_free(&w);
    opts_free(&o);
    unlink(path);
}

static void test_increment_request(void **state)
{
    (void)state;
    lg_opts_t o;
    char err[256], out[512];
    assert_int_equal(parse(&o, "--increment 10 http://127.0.0.1:8080/", err, sizeof err), 0);
    lg_workload_t w;
    assert_int_equal(workload_build(&w, &o, err, sizeof err), 0);
    size_t n = workload_increment(&w, out, 7, -1234);
    out[n] = '\0';
    assert_string_equal(out, "POST /increment HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                             "Content-Type: application/x-www-form-urlencoded\r\n"
                             "Content-Length: 18\r\n\r\nkey=k7&value=-1234");
    assert_true(n <= w.max_len);
    n = workload_increment(&w, out, 4000000000u, -2000000000);
    assert_true(n <= w.max_len);
    n = workload_increment(&w, out, 0, 0);
    out[n] = '\0';
    assert_non_null(strstr(out, "Content-Length: 14\r\n\r\nkey=k0&value=0"));
    workload_free(&w);
    opts_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),  cmocka_unit_test(test_values),
        cmocka_unit_test(test_durations), cmocka_unit_test(test_targets),
        cmocka_unit_test(test_mix),       cmocka_unit_test(test_errors),
        cmocka_unit_test(test_body_file), cmocka_unit_test(test_increment_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
