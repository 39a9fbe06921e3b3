/* The response checkers: a table of responses per protocol, each also fed
 * split at every byte boundary, which must give the same verdict. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../loadgen/check.h"
#include "core/proto.h"

enum {
    V_OK = CHECK_OK,
    V_MISMATCH = CHECK_MISMATCH,
    V_4XX = CHECK_4XX,
    V_5XX = CHECK_5XX,
    V_BAD = 10,
    V_PARTIAL = 11,
    V_EOF_OK = 12
};

/* Feed `in` to the checker in pieces of at most `step` bytes (keeping
 * unconsumed bytes, as the engine does) and return the verdict of the first
 * response, with the bytes it took in *used. */
static int run_check(const check_expect_t *e, const char *in, size_t len, size_t step, size_t *used,
                     int *close_after)
{
    char *buf = malloc(len + 1);
    check_state_t st;
    size_t have = 0, off = 0, fed = 0;
    memset(&st, 0, sizeof st);
    int verdict = V_PARTIAL;
    while (fed < len || have > off) {
        size_t add = len - fed < step ? len - fed : step;
        memcpy(buf + have, in + fed, add);
        have += add;
        fed += add;
        int done = 0, r;
        do {
            r = check_response(&st, e, buf + off, have - off, &done);
            if (r < 0) {
                verdict = V_BAD;
                goto out;
            }
            off += (size_t)r;
            if (done) {
                verdict = st.outcome;
                goto out;
            }
        } while (r > 0 && off < have);
        if (add == 0)
            break;
        /* Compact, as the engine's buffer does. */
        memmove(buf, buf + off, have - off);
        have -= off;
        off = 0;
    }
    if (check_eof(&st))
        verdict = V_EOF_OK;
out:
    *used = fed - (have - off);
    *close_after = st.close;
    free(buf);
    return verdict;
}

typedef struct tcase {
    const char *cmd; /* line command, or an HTTP path (starts with '/') */
    const char *in;
    int verdict;
    int close;
    const char *name;
} tcase_t;

static const tcase_t cases[] = {
    {"PING", "PONG\n", V_OK, 0, "pong"},
    {"PING", "PONG\r\n", V_OK, 0, "pong crlf"},
    {"PING", "PON", V_PARTIAL, 0, "partial"},
    {"PING", "ERR unknown command\n", V_MISMATCH, 0, "err"},
    {"PING", "DONE\n", V_MISMATCH, 0, "wrong word"},
    {"PING", "PONGPONG\n", V_MISMATCH, 0, "longer"},
    {"WAIT 5", "DONE\n", V_OK, 0, "wait"},
    {"WAIT 5", "PONG\n", V_MISMATCH, 0, "wait wrong"},
    {"BURN 0", "RESULT 0\n", V_OK, 0, "burn 0"},
    {"BURN 1", "RESULT 1442695040888963407\n", V_OK, 0, "burn 1"},
    {"BURN 1", "RESULT 1442695040888963406\n", V_MISMATCH, 0, "burn off by one"},
    {"BURN 1", "RESULT x\n", V_MISMATCH, 0, "burn not a number"},
    {"BURN 1", "RESULT \n", V_MISMATCH, 0, "burn empty"},
    {"STREAM 5", "AAAAADONE\n", V_OK, 0, "stream"},
    {"STREAM 5", "AAAAADONE\r\n", V_OK, 0, "stream crlf"},
    {"STREAM 0", "DONE\n", V_OK, 0, "stream 0"},
    {"STREAM 5", "AAAADONE\n", V_BAD, 0, "stream short"},
    {"STREAM 5", "AAAAAADONE\n", V_MISMATCH, 0, "stream long"},
    {"STREAM 5", "ERR number out of range\n", V_MISMATCH, 0, "stream err"},
    {"STREAM 3", "AAA", V_PARTIAL, 0, "stream partial"},

    {"/", "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello, world\n", V_OK, 0, "200"},
    {"/", "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello", V_PARTIAL, 0, "200 partial"},
    {"/", "HTTP/1.1 204 No Content\r\n\r\n", V_OK, 0, "204"},
    {"/", "HTTP/1.1 301 Moved\r\nContent-Length: 0\r\nLocation: /x\r\n\r\n", V_OK, 0, "3xx"},
    {"/", "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n", V_4XX, 0, "404"},
    {"/", "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", V_5XX, 1, "503"},
    {"/", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", V_OK, 1, "close"},
    {"/", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", V_OK, 1, "1.0 closes"},
    {"/", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", V_OK, 0,
     "1.0 keep-alive"},
    {"/", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", V_OK, 0,
     "chunked"},
    {"/", "HTTP/1.1 200 OK\r\n\r\nuntil close", V_EOF_OK, 1, "body until close"},
    {"/", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", V_OK, 0,
     "100 continue"},
    {"/", "HTTP/1.1 2x0 OK\r\n\r\n", V_BAD, 0, "bad status"},
    {"/", "garbage\r\n\r\n", V_BAD, 0, "garbage"},
    {"/", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", V_BAD, 0,
     "cl and te"},
    {"/ping", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nPONG\n", V_OK, 0, "/ping"},
    {"/ping", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nPANG\n", V_MISMATCH, 0, "/ping wrong"},
    {"/ping", "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nPONG", V_MISMATCH, 0, "/ping short"},
    {"/burn?n=1", "HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\nRESULT 1442695040888963407\n", V_OK,
     0, "/burn"},
    {"/burn?n=1", "HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\nRESULT 1442695040888963408\n",
     V_MISMATCH, 0, "/burn wrong"},
    {"/ping", "HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nOops", V_5XX, 0, "/ping 500"},
};

static void expect_for(const char *cmd, check_expect_t *e, char *store)
{
    if (cmd[0] == '/')
        check_expect_http(e, "GET", cmd, store);
    else
        assert_int_equal(check_expect_line(e, cmd), 0);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const tcase_t *c = &cases[i];
        check_expect_t e;
        char store[32];
        expect_for(c->cmd, &e, store);
        size_t len = strlen(c->in);
        for (size_t step = 1; step <= len; step++) {
            size_t used;
            int close_after;
            int v = run_check(&e, c->in, len, step, &used, &close_after);
            if (v != c->verdict)
                fail_msg("%s (step %zu): verdict %d, want %d", c->name, step, v, c->verdict);
            if (v != V_PARTIAL && v != V_BAD && close_after != c->close)
                fail_msg("%s: close %d, want %d", c->name, close_after, c->close);
            if ((v == V_OK || v == V_MISMATCH || v == V_4XX || v == V_5XX) &&
                strcmp(c->name, "stream long") != 0 && strcmp(c->name, "longer") != 0 &&
                used != len)
                fail_msg("%s (step %zu): consumed %zu of %zu", c->name, step, used, len);
        }
    }
}

/* Several responses in one buffer are taken one by one, each exactly. */
static void test_pipelined(void **state)
{
    (void)state;
    const char *in = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nPONG\n"
                     "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nPONG\n";
    int want[] = {CHECK_OK, CHECK_4XX, CHECK_OK};
    check_expect_t e;
    char store[32];
    check_expect_http(&e, "GET", "/ping", store);
    char buf[512];
    strcpy(buf, in);
    size_t off = 0, len = strlen(in);
    check_state_t st;
    memset(&st, 0, sizeof st);
    for (int i = 0; i < 3; i++) {
        int done = 0;
        while (!done) {
            int r = check_response(&st, &e, buf + off, len - off, &done);
            assert_true(r >= 0);
            off += (size_t)r;
        }
        assert_int_equal(st.outcome, want[i]);
        check_reset(&st);
    }
    assert_int_equal(off, len);

    const char *lines = "PONG\nRESULT 0\nAAADONE\nERR bad number\n";
    const char *cmds[] = {"PING", "BURN 0", "STREAM 3", "WAIT 1"};
    int lwant[] = {CHECK_OK, CHECK_OK, CHECK_OK, CHECK_MISMATCH};
    strcpy(buf, lines);
    off = 0;
    len = strlen(lines);
    for (int i = 0; i < 4; i++) {
        check_expect_line(&e, cmds[i]);
        int done = 0;
        while (!done) {
            int r = check_response(&st, &e, buf + off, len - off, &done);
            assert_true(r >= 0);
            off += (size_t)r;
        }
        assert_int_equal(st.outcome, lwant[i]);
        check_reset(&st);
    }
    assert_int_equal(off, len);
}

/* A large STREAM is checked as it arrives, never buffered whole. */
static void test_stream_large(void **state)
{
    (void)state;
    check_expect_t e;
    assert_int_equal(check_expect_line(&e, "STREAM 1000000"), 0);
    char chunk[4096];
    memset(chunk, 'A', sizeof chunk);
    check_state_t st;
    memset(&st, 0, sizeof st);
    uint64_t sent = 0;
    int done = 0;
    while (sent < 1000000) {
        size_t n = 1000000 - sent < sizeof chunk ? (size_t)(1000000 - sent) : sizeof chunk;
        int r = check_response(&st, &e, chunk, n, &done);
        assert_int_equal(r, (int)n);
        assert_false(done);
        sent += n;
    }
    char tail[] = "DONE\n";
    assert_int_equal(check_response(&st, &e, tail, 5, &done), 5);
    assert_true(done);
    assert_int_equal(st.outcome, CHECK_OK);
}

static void test_expect(void **state)
{
    (void)state;
    check_expect_t e;
    char store[32];
    assert_int_equal(check_expect_line(&e, "BURN 1000"), 0);
    assert_int_equal(e.kind, CHECK_RESULT);
    assert_true(e.n == proto_burn(1000));
    assert_int_equal(check_expect_line(&e, "HELLO"), -EINVAL);
    assert_int_equal(check_expect_line(&e, "BURN x"), -EINVAL);
    check_expect_http(&e, "GET", "/burn?n=10", store);
    assert_non_null(e.body);
    char want[40];
    snprintf(want, sizeof want, "RESULT %llu\n", (unsigned long long)proto_burn(10));
    assert_string_equal(e.body, want);
    check_expect_http(&e, "GET", "/", store);
    assert_null(e.body);
    check_expect_http(&e, "POST", "/ping", store);
    assert_null(e.body);
    check_expect_http(&e, "HEAD", "/", store);
    assert_true(e.head);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_stream_large),
        cmocka_unit_test(test_expect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
