/* Unit tests of the line protocol: proto_parse_line, proto_detect,
 * proto_burn and proto_parse_u64. Every input sits right before a guard page. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../lib/tlib.h"
#include "core/proto.h"

#define DEF PROTO_BURN_MAX

struct line_case {
    const char *in;
    uint64_t burn_max;
    int ret; /* expected return: bytes taken, 0 partial, -EMSGSIZE too long; -2: strlen(in) */
    int cmd; /* expected command when ret > 0 */
    uint64_t arg;
    const char *err; /* expected reason for CMD_ERR */
};

#define ALL (-2)

static const struct line_case line_cases[] = {
    {"PING\n", DEF, ALL, CMD_PING, 0, NULL},
    {"PING\r\n", DEF, ALL, CMD_PING, 0, NULL},
    {"ping\n", DEF, ALL, CMD_PING, 0, NULL},
    {"PING\nPING\n", DEF, 5, CMD_PING, 0, NULL},
    {"PING x\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"PING \n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT 0\n", DEF, ALL, CMD_WAIT, 0, NULL},
    {"WAIT 100\r\n", DEF, ALL, CMD_WAIT, 100, NULL},
    {"wait 7\n", DEF, ALL, CMD_WAIT, 7, NULL},
    {"WAIT 60000\n", DEF, ALL, CMD_WAIT, 60000, NULL},
    {"WAIT 60001\n", DEF, ALL, CMD_ERR, 0, "number out of range"},
    {"WAIT\n", DEF, ALL, CMD_ERR, 0, "missing number"},
    {"WAIT \n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT abc\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT -1\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT +1\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT  5\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT 5 \n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT 5\r\r\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"WAIT 0x10\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"BURN 0\n", DEF, ALL, CMD_BURN, 0, NULL},
    {"BURN 3\n", DEF, ALL, CMD_BURN, 3, NULL},
    {"BURN 10000000000\n", DEF, ALL, CMD_BURN, 10000000000ULL, NULL},
    {"BURN 10000000001\n", DEF, ALL, CMD_ERR, 0, "number out of range"},
    {"BURN 100\n", 100, ALL, CMD_BURN, 100, NULL},
    {"BURN 101\n", 100, ALL, CMD_ERR, 0, "number out of range"},
    {"BURN 18446744073709551616\n", DEF, ALL, CMD_ERR, 0, "number out of range"},
    {"BURN 1.5\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"BURN 99999999999999999999x\n", DEF, ALL, CMD_ERR, 0, "bad number"},
    {"STREAM 0\n", DEF, ALL, CMD_STREAM, 0, NULL},
    {"STREAM 4294967296\n", DEF, ALL, CMD_STREAM, 4294967296ULL, NULL},
    {"STREAM 4294967297\n", DEF, ALL, CMD_ERR, 0, "number out of range"},
    {"STREAM\n", DEF, ALL, CMD_ERR, 0, "missing number"},
    {"STREAMS 1\n", DEF, ALL, CMD_ERR, 0, "unknown command"},
    {"FOO\n", DEF, ALL, CMD_ERR, 0, "unknown command"},
    {"JOIN lobby\n", DEF, ALL, CMD_JOIN, 0, NULL},
    {"join a b\r\n", DEF, ALL, CMD_JOIN, 0, NULL},
    {"JOIN\n", DEF, ALL, CMD_ERR, 0, "missing room"},
    {"JOIN \n", DEF, ALL, CMD_ERR, 0, "missing room"},
    {"SAY hello there\n", DEF, ALL, CMD_SAY, 0, NULL},
    {"SAY\n", DEF, ALL, CMD_ERR, 0, "missing text"},
    {"LEAVE\n", DEF, ALL, CMD_LEAVE, 0, NULL},
    {"LEAVE now\n", DEF, ALL, CMD_ERR, 0, "unexpected argument"},
    {"JOINS x\n", DEF, ALL, CMD_ERR, 0, "unknown command"},
    {"PI\rNG\n", DEF, ALL, CMD_ERR, 0, "unknown command"},
    {" PING\n", DEF, ALL, CMD_ERR, 0, "unknown command"},
    {"\n", DEF, ALL, CMD_ERR, 0, "empty command"},
    {"\r\n", DEF, ALL, CMD_ERR, 0, "empty command"},
    {"GET / HTTP/1.1\r\n", DEF, ALL, CMD_ERR, 0, "unknown command"},
    {"", DEF, 0, 0, 0, NULL},
    {"PING", DEF, 0, 0, 0, NULL},
    {"PING\r", DEF, 0, 0, 0, NULL},
    {"WAIT 10", DEF, 0, 0, 0, NULL},
};

static void check_line(const char *in, size_t len, const struct line_case *c, int want)
{
    char *g = tguard_copy(in, len);
    proto_line_t out;
    memset(&out, 0xa5, sizeof out);
    int r = proto_parse_line(g, len, c->burn_max, &out);
    if (r != want)
        fail_msg("proto_parse_line(\"%.*s\") = %d, want %d", (int)len, in, r, want);
    if (r > 0) {
        if (out.cmd != c->cmd)
            fail_msg("\"%s\": cmd %d, want %d", in, out.cmd, c->cmd);
        if (c->cmd == CMD_ERR) {
            if (!out.err || strcmp(out.err, c->err) != 0)
                fail_msg("\"%s\": reason \"%s\", want \"%s\"", in, out.err ? out.err : "(null)",
                         c->err);
        } else {
            assert_null(out.err);
            assert_int_equal(out.arg, c->arg);
        }
    }
    tguard_free(g, len);
}

static void test_parse_line_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof line_cases / sizeof line_cases[0]; i++) {
        const struct line_case *c = &line_cases[i];
        size_t len = strlen(c->in);
        check_line(c->in, len, c, c->ret == ALL ? (int)len : c->ret);
    }
}

/* Every strict prefix of a line that has no '\n' yet is partial. */
static void test_parse_line_partial(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof line_cases / sizeof line_cases[0]; i++) {
        const struct line_case *c = &line_cases[i];
        const char *nl = strchr(c->in, '\n');
        size_t upto = nl ? (size_t)(nl - c->in) : strlen(c->in);
        for (size_t k = 0; k <= upto; k++)
            check_line(c->in, k, c, 0);
    }
}

/* A line of n characters plus its line end. */
static char *long_line(size_t n, const char *eol)
{
    char *s = malloc(n + strlen(eol) + 1);
    memset(s, 'A', n);
    strcpy(s + n, eol);
    return s;
}

static void test_parse_line_length_limit(void **state)
{
    (void)state;
    struct line_case unknown = {NULL, DEF, 0, CMD_ERR, 0, "unknown command"};
    char *s;

    s = long_line(PROTO_MAX_LINE, "\n"); /* exactly at the limit: fine */
    check_line(s, strlen(s), &unknown, PROTO_MAX_LINE + 1);
    free(s);
    s = long_line(PROTO_MAX_LINE, "\r\n");
    check_line(s, strlen(s), &unknown, PROTO_MAX_LINE + 2);
    free(s);
    s = long_line(PROTO_MAX_LINE + 1, "\n"); /* one over */
    check_line(s, strlen(s), &unknown, -EMSGSIZE);
    free(s);
    s = long_line(PROTO_MAX_LINE + 1, "\r\n");
    check_line(s, strlen(s), &unknown, -EMSGSIZE);
    free(s);
    s = long_line(PROTO_MAX_LINE + 2, ""); /* no line end, already too long */
    check_line(s, strlen(s), &unknown, -EMSGSIZE);
    free(s);
    s = long_line(100000, "");
    check_line(s, strlen(s), &unknown, -EMSGSIZE);
    free(s);
    s = long_line(PROTO_MAX_LINE, ""); /* may still end in time */
    check_line(s, strlen(s), &unknown, 0);
    free(s);

    /* A long valid command: "WAIT " and a number padded with zeros. */
    s = malloc(PROTO_MAX_LINE + 2);
    memcpy(s, "WAIT ", 5);
    memset(s + 5, '0', PROTO_MAX_LINE - 6);
    strcpy(s + PROTO_MAX_LINE - 1, "9\n");
    struct line_case wait9 = {NULL, DEF, 0, CMD_WAIT, 9, NULL};
    check_line(s, strlen(s), &wait9, PROTO_MAX_LINE + 1);
    free(s);
}

struct detect_case {
    const char *in;
    int want;
};

static const struct detect_case detect_cases[] = {
    {"GET / HTTP/1.1\r\n", PROTO_HTTP},
    {"GET / HTTP/1.0\n", PROTO_HTTP},
    {"POST /x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n", PROTO_HTTP},
    {"FOO bar HTTP/9.9\n", PROTO_HTTP},
    {"PING\n", PROTO_LINE},
    {"PING\r\nGET / HTTP/1.1\r\n", PROTO_LINE},
    {"GET / HTTP/2\r\n", PROTO_LINE},
    {"GET / HTTP/1.x\r\n", PROTO_LINE},
    {"HTTP/1.1\n", PROTO_LINE},
    {"\n", PROTO_LINE},
    {"", PROTO_UNKNOWN},
    {"GET / HTTP/1.1", PROTO_UNKNOWN},
    {"PING", PROTO_UNKNOWN},
};

static void test_detect(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof detect_cases / sizeof detect_cases[0]; i++) {
        const char *in = detect_cases[i].in;
        size_t len = strlen(in);
        char *g = tguard_copy(in, len);
        int r = proto_detect(g, len);
        if (r != detect_cases[i].want)
            fail_msg("proto_detect(\"%s\") = %d, want %d", in, r, detect_cases[i].want);
        /* Every prefix without a line end is undecided. */
        const char *nl = strchr(in, '\n');
        for (size_t k = 0; nl && k < (size_t)(nl - in); k++) {
            char *p = tguard_copy(in, k);
            assert_int_equal(proto_detect(p, k), PROTO_UNKNOWN);
            tguard_free(p, k);
        }
        tguard_free(g, len);
    }

    /* A first line longer than a command line, without its end yet. */
    size_t n = 3 * PROTO_MAX_LINE;
    char *s = malloc(n);
    memset(s, 'a', n);
    memcpy(s, "GET /", 5);
    char *g = tguard_copy(s, n);
    assert_int_equal(proto_detect(g, n), PROTO_HTTP);
    tguard_free(g, n);
    memset(s, 'A', n);
    g = tguard_copy(s, n);
    assert_int_equal(proto_detect(g, n), PROTO_LINE);
    tguard_free(g, n);
    free(s);
}

static void test_burn(void **state)
{
    (void)state;
    const uint64_t a = 6364136223846793005ULL, c = 1442695040888963407ULL;
    assert_int_equal(proto_burn(0), 0);
    assert_int_equal(proto_burn(1), c);         /* 0 * a + c */
    assert_int_equal(proto_burn(2), c * a + c); /* wraps mod 2^64 */
    assert_int_equal(proto_burn(2), 1876011003808476466ULL);
    assert_int_equal(proto_burn(3), (c * a + c) * a + c);
    /* Measured on a server. */
    assert_int_equal(proto_burn(3), 11166244414315200793ULL);
    assert_int_equal(proto_burn(1000), 902429759771004424ULL);
    /* n + 1 steps = one step after n. */
    assert_int_equal(proto_burn(1001), proto_burn(1000) * a + c);
}

struct u64_case {
    const char *in;
    uint64_t max;
    int ret;
    uint64_t val;
};

static const struct u64_case u64_cases[] = {
    {"0", UINT64_MAX, 0, 0},
    {"007", UINT64_MAX, 0, 7},
    {"42", 42, 0, 42},
    {"43", 42, -ERANGE, 0},
    {"18446744073709551615", UINT64_MAX, 0, UINT64_MAX},
    {"18446744073709551616", UINT64_MAX, -ERANGE, 0},
    {"18446744073709551620", UINT64_MAX, -ERANGE, 0},
    {"99999999999999999999", UINT64_MAX, -ERANGE, 0},
    {"184467440737095516150", UINT64_MAX, -ERANGE, 0},
    {"", UINT64_MAX, -EINVAL, 0},
    {"-1", UINT64_MAX, -EINVAL, 0},
    {"+1", UINT64_MAX, -EINVAL, 0},
    {" 1", UINT64_MAX, -EINVAL, 0},
    {"1 ", UINT64_MAX, -EINVAL, 0},
    {"1a", UINT64_MAX, -EINVAL, 0},
    {"184467440737095516160x", UINT64_MAX, -EINVAL, 0}, /* not a number, though it overflows */
};

static void test_parse_u64(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof u64_cases / sizeof u64_cases[0]; i++) {
        const struct u64_case *c = &u64_cases[i];
        size_t len = strlen(c->in);
        char *g = tguard_copy(c->in, len);
        uint64_t v = 12345;
        int r = proto_parse_u64(g, len, c->max, &v);
        if (r != c->ret)
            fail_msg("proto_parse_u64(\"%s\") = %d, want %d", c->in, r, c->ret);
        assert_int_equal(v, r == 0 ? c->val : 12345); /* untouched on error */
        tguard_free(g, len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_line_table),
        cmocka_unit_test(test_parse_line_partial),
        cmocka_unit_test(test_parse_line_length_limit),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_burn),
        cmocka_unit_test(test_parse_u64),
    };
    return cmocka_run_group_tests_name("proto", tests, NULL, NULL);
}
