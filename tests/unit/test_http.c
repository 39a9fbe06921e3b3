/* Unit tests of the HTTP parser: requests (a table, every valid one also split
 * at every byte), responses, body framing, keep-alive, the Host rule, the
 * chunked decoder and query strings. Every input sits right before a
 * PROT_NONE guard page, so a read past its end crashes the test. */
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
#include "core/http.h"

#define ALL  1000000 /* expected return: the whole input is the head */
#define BAD  HTTP_BAD
#define PART HTTP_PARTIAL
#define BIG  HTTP_TOO_LARGE
#define NOQ  ((const char *)0) /* no query expected */

/* One request per line: input, expected return, then for a head that
 * parses: method, path, query (NOQ: none), minor version, number of headers,
 * and the last header's name and value (NULL: not checked). */
struct req_case {
    const char *in;
    int ret;
    const char *method, *path, *query;
    int minor;
    int nh;
    const char *hname, *hvalue;
};

/* A request that does not parse: only the return is checked. */
#define E(in, ret)                                                                                 \
    {                                                                                              \
        in, ret, NULL, NULL, NULL, 0, 0, NULL, NULL                                                \
    }

static const struct req_case req_cases[] = {
    /* valid */
    {"GET / HTTP/1.1\r\n\r\n", ALL, "GET", "/", NOQ, 1, 0, NULL, NULL},
    {"GET / HTTP/1.0\n\n", ALL, "GET", "/", NOQ, 0, 0, NULL, NULL},
    {"GET / HTTP/1.1\n\r\n", ALL, "GET", "/", NOQ, 1, 0, NULL, NULL},
    {"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", ALL, "GET", "/ping", NOQ, 1, 1, "Host", "x"},
    {"GET /ping HTTP/1.1\nHost: x\n\n", ALL, "GET", "/ping", NOQ, 1, 1, "Host", "x"},
    {"GET /wait?ms=10 HTTP/1.1\r\n\r\n", ALL, "GET", "/wait", "ms=10", 1, 0, NULL, NULL},
    {"GET /a?b?c HTTP/1.1\r\n\r\n", ALL, "GET", "/a", "b?c", 1, 0, NULL, NULL},
    {"GET /? HTTP/1.1\r\n\r\n", ALL, "GET", "/", "", 1, 0, NULL, NULL},
    {"GET /%41b?x=%20 HTTP/1.1\r\n\r\n", ALL, "GET", "/%41b", "x=%20", 1, 0, NULL, NULL},
    {"GET http://example.com/burn?n=3 HTTP/1.1\r\n\r\n", ALL, "GET", "/burn", "n=3", 1, 0, NULL,
     NULL},
    {"GET http://example.com:80/ HTTP/1.1\r\n\r\n", ALL, "GET", "/", NOQ, 1, 0, NULL, NULL},
    {"GET http://example.com HTTP/1.1\r\n\r\n", ALL, "GET", "/", NOQ, 1, 0, NULL, NULL},
    {"GET http://example.com?x=1 HTTP/1.1\r\n\r\n", ALL, "GET", "/", "x=1", 1, 0, NULL, NULL},
    {"OPTIONS * HTTP/1.1\r\n\r\n", ALL, "OPTIONS", "*", NOQ, 1, 0, NULL, NULL},
    {"M-SEARCH * HTTP/1.1\r\n\r\n", ALL, "M-SEARCH", "*", NOQ, 1, 0, NULL, NULL},
    {"get / HTTP/1.1\r\n\r\n", ALL, "get", "/", NOQ, 1, 0, NULL, NULL},
    {"GET / HTTP/2.0\r\n\r\n", ALL, "GET", "/", NOQ, 0, 0, NULL, NULL},
    {"GET / HTTP/1.1\r\nX:  a b \t\r\n\r\n", ALL, "GET", "/", NOQ, 1, 1, "X", "a b"},
    {"GET / HTTP/1.1\r\nX:\r\n\r\n", ALL, "GET", "/", NOQ, 1, 1, "X", ""},
    {"GET / HTTP/1.1\r\nX: \t \r\n\r\n", ALL, "GET", "/", NOQ, 1, 1, "X", ""},
    {"GET / HTTP/1.1\r\nX:a\tb\r\n\r\n", ALL, "GET", "/", NOQ, 1, 1, "X", "a\tb"},
    {"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", ALL, "GET", "/", NOQ, 1, 1, "X", "caf\xc3\xa9"},
    {"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nAccept: */*\r\n\r\n", ALL, "GET", "/", NOQ, 1,
     3, "Accept", "*/*"},
    {"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\n", ALL, "GET", "/", NOQ, 1, 2, "X", "b"},
    {"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 39, "POST", "/x", NOQ, 1, 1,
     "Content-Length", "5"},
    {"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 18, "GET", "/", NOQ, 1, 0, NULL, NULL},
    /* malformed */
    E("G(T / HTTP/1.1\r\n\r\n", BAD),
    E("G@T / HTTP/1.1\r\n\r\n", BAD),
    E(" GET / HTTP/1.1\r\n\r\n", BAD),
    E("GET  / HTTP/1.1\r\n\r\n", BAD),
    E("GET\t/ HTTP/1.1\r\n\r\n", BAD),
    E("GET /\r\n\r\n", BAD),
    E("GET / \r\n\r\n", BAD),
    E("GET\r\n\r\n", BAD),
    E("\r\n\r\n", BAD),
    E("\n\n", BAD),
    E("GET / HTTP/1.1 \r\n\r\n", BAD),
    E("GET / HTTP/1\r\n\r\n", BAD),
    E("GET / HTTP/1.\r\n\r\n", BAD),
    E("GET / HTTP/a.1\r\n\r\n", BAD),
    E("GET / http/1.1\r\n\r\n", BAD),
    E("GET / HTTP/1.1x\r\n\r\n", BAD),
    E("GET / HTTP/1.1\r\r\n\r\n", BAD),
    E("GET / HTTP/1.1\rHost: a\r\n\r\n", BAD),       /* bare CR */
    E("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", BAD),     /* bare CR in a value */
    E("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", BAD),  /* obs-fold */
    E("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", BAD), /* obs-fold */
    E("GET / HTTP/1.1\r\nHost : a\r\n\r\n", BAD),
    E("GET / HTTP/1.1\r\nHost a\r\n\r\n", BAD),
    E("GET / HTTP/1.1\r\n: a\r\n\r\n", BAD),
    E("GET / HTTP/1.1\r\nX(y): a\r\n\r\n", BAD),
    E("GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n", BAD),
    E("GET / HTTP/1.1\r\nX: a\x7fz\r\n\r\n", BAD),
    E("GET /a\x7f HTTP/1.1\r\n\r\n", BAD),
    E("GET /\xc3\xa9 HTTP/1.1\r\n\r\n", BAD),
    E("GET example.com/x HTTP/1.1\r\n\r\n", BAD), /* neither origin nor absolute form */
    E("GET http:/x HTTP/1.1\r\n\r\n", BAD),
    E("GET a: HTTP/1.1\r\n\r\n", BAD),
    /* incomplete */
    E("", PART),
    E("GET / HTTP/1.1\r\n", PART),
    E("GET / HTTP/1.1\r\n\r", PART),
    E("GET / HTTP/1.1\r\nHost: a\r\n", PART),
};

/* The head's length when the whole input is one. */
static int expected_ret(const struct req_case *c, size_t len)
{
    return c->ret == ALL ? (int)len : c->ret;
}

static void expect_str(const char *what, const char *in, const char *p, size_t n, const char *want)
{
    if (!want) {
        if (p)
            fail_msg("\"%s\": %s is \"%.*s\", want none", in, what, (int)n, p);
        return;
    }
    if (!p || n != strlen(want) || memcmp(p, want, n) != 0)
        fail_msg("\"%s\": %s is \"%.*s\", want \"%s\"", in, what, p ? (int)n : 6, p ? p : "(null)",
                 want);
}

/* A parsed head points into the input and fits in the `ret` bytes it reported. */
static void expect_within(const char *in, const char *g, int ret, const char *p, size_t n)
{
    if (p && (p < g || p + n > g + ret))
        fail_msg("\"%s\": a field points outside the head", in);
}

/* Parse a guarded copy of in[0..len). The copy (which req points into) lives
 * until the next call. */
static int parse_guarded(const char *in, size_t len, size_t max_head, http_request_t *req)
{
    static char *g;
    static size_t glen;
    if (g)
        tguard_free(g, glen);
    g = tguard_copy(in, len);
    glen = len;
    memset(req, 0xa5, sizeof *req);
    int r = http_parse_request(g, len, max_head, req);
    if (r > 0) {
        expect_within(in, g, r, req->method, req->method_len);
        /* The path may be the static "/" of an absolute-form without one. */
        if (!(req->path_len == 1 && req->path[0] == '/'))
            expect_within(in, g, r, req->path, req->path_len);
        expect_within(in, g, r, req->query, req->query_len);
        expect_within(in, g, r, req->authority, req->authority_len);
        assert_true(req->num_headers <= HTTP_MAX_HEADERS);
        for (size_t i = 0; i < req->num_headers; i++) {
            expect_within(in, g, r, req->headers[i].name, req->headers[i].name_len);
            expect_within(in, g, r, req->headers[i].value, req->headers[i].value_len);
        }
    }
    return r;
}

static void test_request_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof req_cases / sizeof req_cases[0]; i++) {
        const struct req_case *c = &req_cases[i];
        size_t len = strlen(c->in);
        http_request_t req;
        int r = parse_guarded(c->in, len, HTTP_MAX_HEAD, &req);
        int want = expected_ret(c, len);
        if (r != want)
            fail_msg("http_parse_request(\"%s\") = %d, want %d", c->in, r, want);
        if (r <= 0)
            continue;
        expect_str("method", c->in, req.method, req.method_len, c->method);
        expect_str("path", c->in, req.path, req.path_len, c->path);
        expect_str("query", c->in, req.query, req.query_len, c->query);
        if (req.major != (strstr(c->in, " HTTP/2.") ? 2 : 1) || req.minor != c->minor)
            fail_msg("\"%s\": version %d.%d", c->in, req.major, req.minor);
        if ((int)req.num_headers != c->nh)
            fail_msg("\"%s\": %zu headers, want %d", c->in, req.num_headers, c->nh);
        if (c->hname) {
            const http_header_t *h = &req.headers[req.num_headers - 1];
            expect_str("header name", c->in, h->name, h->name_len, c->hname);
            expect_str("header value", c->in, h->value, h->value_len, c->hvalue);
        }
    }
}

/* Every valid request cut short anywhere before the end of its head is
 * partial; once the head is there, the answer is the same as for the whole. */
static void test_request_split(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof req_cases / sizeof req_cases[0]; i++) {
        const struct req_case *c = &req_cases[i];
        size_t len = strlen(c->in);
        int whole = expected_ret(c, len);
        if (whole <= 0)
            continue;
        for (size_t k = 0; k <= len; k++) {
            http_request_t req;
            int r = parse_guarded(c->in, k, HTTP_MAX_HEAD, &req);
            int want = k < (size_t)whole ? PART : whole;
            if (r != want)
                fail_msg("\"%s\" cut at %zu: %d, want %d", c->in, k, r, want);
        }
    }
}

/* Invalid requests cut anywhere: partial or bad, never anything else. */
static void test_request_split_invalid(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof req_cases / sizeof req_cases[0]; i++) {
        const struct req_case *c = &req_cases[i];
        size_t len = strlen(c->in);
        if (c->ret != BAD)
            continue;
        for (size_t k = 0; k < len; k++) {
            http_request_t req;
            int r = parse_guarded(c->in, k, HTTP_MAX_HEAD, &req);
            if (r != PART && r != BAD)
                fail_msg("\"%s\" cut at %zu: %d", c->in, k, r);
        }
    }
}

/* A request line and n "X-i: v" headers. */
static char *many_headers(int n)
{
    size_t cap = 64 + (size_t)n * 16;
    char *s = malloc(cap);
    size_t o = (size_t)snprintf(s, cap, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < n; i++)
        o += (size_t)snprintf(s + o, cap - o, "X-%d: v\r\n", i);
    snprintf(s + o, cap - o, "\r\n");
    return s;
}

static void test_request_limits(void **state)
{
    (void)state;
    http_request_t req;
    char *s = many_headers(HTTP_MAX_HEADERS);
    assert_int_equal(parse_guarded(s, strlen(s), HTTP_MAX_HEAD, &req), (int)strlen(s));
    assert_int_equal(req.num_headers, HTTP_MAX_HEADERS);
    free(s);
    s = many_headers(HTTP_MAX_HEADERS + 1);
    assert_int_equal(parse_guarded(s, strlen(s), HTTP_MAX_HEAD, &req), BIG);
    free(s);

    /* The head limit, exactly at and one byte over. */
    const char *r = "GET /abc HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t len = strlen(r);
    assert_int_equal(parse_guarded(r, len, len, &req), (int)len);
    assert_int_equal(parse_guarded(r, len, len - 1, &req), BIG);
    assert_int_equal(parse_guarded(r, len - 1, len - 1, &req), BIG); /* incomplete, at the limit */
    assert_int_equal(parse_guarded(r, len - 2, len - 1, &req), PART);

    /* A header block over 8 KiB, complete or still arriving. */
    size_t n = HTTP_MAX_HEAD + 100;
    char *big = malloc(n + 8);
    memset(big, 'a', n + 8);
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    memcpy(big + n, "\r\n\r\n", 4);
    assert_int_equal(parse_guarded(big, n + 4, HTTP_MAX_HEAD, &req), BIG);
    assert_int_equal(parse_guarded(big, n, HTTP_MAX_HEAD, &req), BIG);
    assert_int_equal(parse_guarded(big, HTTP_MAX_HEAD, HTTP_MAX_HEAD, &req), BIG);
    assert_int_equal(parse_guarded(big, HTTP_MAX_HEAD - 1, HTTP_MAX_HEAD, &req), PART);
    /* A head of exactly 8192 bytes is fine. */
    memcpy(big + HTTP_MAX_HEAD - 4, "\r\n\r\n", 4);
    assert_int_equal(parse_guarded(big, HTTP_MAX_HEAD, HTTP_MAX_HEAD, &req), HTTP_MAX_HEAD);
    free(big);

    /* A NUL byte in the target or in a header value. */
    static const char nul_target[] = "GET /a\0b HTTP/1.1\r\n\r\n";
    assert_int_equal(parse_guarded(nul_target, sizeof nul_target - 1, HTTP_MAX_HEAD, &req), BAD);
    static const char nul_value[] = "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n";
    assert_int_equal(parse_guarded(nul_value, sizeof nul_value - 1, HTTP_MAX_HEAD, &req), BAD);
}

/* ---- responses ---- */

struct res_case {
    const char *in;
    int ret;
    int status, minor, nh;
};

#define RE(in, ret)                                                                                \
    {                                                                                              \
        in, ret, 0, 0, 0                                                                           \
    }

static const struct res_case res_cases[] = {
    {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", ALL, 200, 1, 1},
    {"HTTP/1.0 404 Not Found\r\n\r\n", ALL, 404, 0, 0},
    {"HTTP/1.1 200\r\n\r\n", ALL, 200, 1, 0},
    {"HTTP/1.1 200 \r\n\r\n", ALL, 200, 1, 0},
    {"HTTP/1.1 503 Service Unavailable\nConnection: close\n\n", ALL, 503, 1, 1},
    {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 25, 100, 1, 0},
    RE("HTTP/1.1 20 OK\r\n\r\n", BAD),
    RE("HTTP/1.1 600 X\r\n\r\n", BAD),
    RE("HTTP/1.1 099 X\r\n\r\n", BAD),
    RE("HTTP/1.1 2x0 X\r\n\r\n", BAD),
    RE("HTTP/1.1 200OK\r\n\r\n", BAD),
    RE("HTTP/1.1  200 OK\r\n\r\n", BAD),
    RE("HTTP/1.1 200 OK\rX\r\n\r\n", BAD),
    RE("HTTP/1.1 200 O\001K\r\n\r\n", BAD), /* a control byte in the reason */
    RE("HTTP/1.1 200 O\177K\r\n\r\n", BAD),
    {"HTTP/1.1 200 O\tK \200\r\n\r\n", ALL, 200, 1, 0}, /* HTAB, obs-text: text */
    RE("HTTP/1.1 200 OK\r\nX : y\r\n\r\n", BAD),
    RE("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", BAD),
    RE("ICY 200 OK\r\n\r\n", BAD),
    RE("HTTP/1.1\r\n\r\n", BAD),
    RE("", PART),
    RE("HTTP/1.1 200 OK\r\n", PART),
};

static void test_response_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof res_cases / sizeof res_cases[0]; i++) {
        const struct res_case *c = &res_cases[i];
        size_t len = strlen(c->in);
        int want = c->ret == ALL ? (int)len : c->ret;
        for (size_t k = 0; k <= len; k++) {
            char *g = tguard_copy(c->in, k);
            http_response_t res;
            memset(&res, 0xa5, sizeof res);
            int r = http_parse_response(g, k, HTTP_MAX_HEAD, &res);
            if (k == len) {
                if (r != want)
                    fail_msg("http_parse_response(\"%s\") = %d, want %d", c->in, r, want);
                if (r > 0) {
                    assert_int_equal(res.status, c->status);
                    assert_int_equal(res.major, 1);
                    assert_int_equal(res.minor, c->minor);
                    assert_int_equal(res.num_headers, c->nh);
                    for (size_t h = 0; h < res.num_headers; h++)
                        assert_true(res.headers[h].value >= g &&
                                    res.headers[h].value + res.headers[h].value_len <= g + r);
                }
            } else if (want > 0) {
                int w = k < (size_t)want ? PART : want;
                if (r != w)
                    fail_msg("\"%s\" cut at %zu: %d, want %d", c->in, k, r, w);
            } else if (r != PART && r != BAD) {
                fail_msg("\"%s\" cut at %zu: %d", c->in, k, r);
            }
            tguard_free(g, k);
        }
    }
    /* Too large. */
    http_response_t res;
    const char *r = "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n";
    assert_int_equal(http_parse_response(r, strlen(r), strlen(r) - 1, &res), BIG);
}

/* ---- framing and keep-alive, on parsed heads ---- */

struct framing_case {
    const char *headers; /* header lines after "POST / HTTP/1.1\r\n" */
    int ret;
    int64_t cl;
    int chunked;
};

#define F(headers, status)                                                                         \
    {                                                                                              \
        headers, status, 0, 0                                                                      \
    }

static const struct framing_case framing_cases[] = {
    {"", 0, -1, 0},
    {"Host: a\r\n", 0, -1, 0},
    {"Content-Length: 5\r\n", 0, 5, 0},
    {"content-length: 0\r\n", 0, 0, 0},
    {"Content-Length: 007\r\n", 0, 7, 0},
    {"Content-Length: 999999999999999999\r\n", 0, 999999999999999999LL, 0},
    {"Content-Length: 5\r\nContent-Length: 5\r\n", 0, 5, 0},
    {"Transfer-Encoding: chunked\r\n", 0, -1, 1},
    {"transfer-encoding: CHUNKED\r\n", 0, -1, 1},
    F("Content-Length: 5\r\nContent-Length: 6\r\n", 400),
    F("Content-Length: -1\r\n", 400),
    F("Content-Length: +1\r\n", 400),
    F("Content-Length: 1x\r\n", 400),
    F("Content-Length: 0x10\r\n", 400),
    F("Content-Length:\r\n", 400),
    F("Content-Length: 1 2\r\n", 400),
    F("Content-Length: 5, 5\r\n", 400),
    F("Content-Length: 9999999999999999999\r\n", 400),
    F("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
    F("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
    F("Transfer-Encoding: gzip\r\n", 501),
    F("Transfer-Encoding: gzip, chunked\r\n", 501),
    F("Transfer-Encoding: chunked, gzip\r\n", 501),
    F("Transfer-Encoding: identity\r\n", 501),
    F("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 501),
};

static int parse_with(const char *line, const char *headers, http_request_t *req)
{
    static char head[1024]; /* the parsed fields point into it */
    snprintf(head, sizeof head, "%s\r\n%s\r\n", line, headers);
    int r = http_parse_request(head, strlen(head), HTTP_MAX_HEAD, req);
    if (r != (int)strlen(head))
        fail_msg("\"%s\" did not parse: %d", head, r);
    return r;
}

static void test_body_framing(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof framing_cases / sizeof framing_cases[0]; i++) {
        const struct framing_case *c = &framing_cases[i];
        http_request_t req;
        parse_with("POST / HTTP/1.1", c->headers, &req);
        int64_t cl = 12345;
        int chunked = 12345;
        int r = http_body_framing(req.headers, req.num_headers, &cl, &chunked);
        if (r != c->ret)
            fail_msg("framing of \"%s\" = %d, want %d", c->headers, r, c->ret);
        if (r == 0 && (cl != c->cl || chunked != c->chunked))
            fail_msg("framing of \"%s\": length %lld chunked %d", c->headers, (long long)cl,
                     chunked);
    }
}

struct ka_case {
    const char *line, *headers;
    int keep;
};

static const struct ka_case ka_cases[] = {
    {"GET / HTTP/1.1", "", 1},
    {"GET / HTTP/1.1", "Connection: close\r\n", 0},
    {"GET / HTTP/1.1", "Connection: Close\r\n", 0},
    {"GET / HTTP/1.1", "connection: keep-alive, close\r\n", 0},
    {"GET / HTTP/1.1", "Connection: closed\r\n", 1},
    {"GET / HTTP/1.1", "Connection: upgrade\r\n", 1},
    {"GET / HTTP/1.1", "Connection: keep-alive\r\n", 1},
    {"GET / HTTP/1.0", "", 0},
    {"GET / HTTP/1.0", "Connection: keep-alive\r\n", 1},
    {"GET / HTTP/1.0", "Connection: Keep-Alive\r\n", 1},
    {"GET / HTTP/1.0", "Connection: close\r\n", 0},
};

static void test_keep_alive(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof ka_cases / sizeof ka_cases[0]; i++) {
        http_request_t req;
        parse_with(ka_cases[i].line, ka_cases[i].headers, &req);
        if (http_keep_alive(&req) != ka_cases[i].keep)
            fail_msg("keep-alive of \"%s\" + \"%s\" is not %d", ka_cases[i].line,
                     ka_cases[i].headers, ka_cases[i].keep);
    }
}

/* RFC 9112 3.2: Host is required in HTTP/1.1, never repeated, and valid. */
struct host_case {
    const char *line, *headers;
    int ret;
};

static const struct host_case host_cases[] = {
    {"GET / HTTP/1.1", "Host: example.com\r\n", 0},
    {"GET / HTTP/1.1", "host: example.com:8080\r\n", 0},
    {"GET / HTTP/1.1", "Host: 127.0.0.1:9\r\n", 0},
    {"GET / HTTP/1.1", "Host: [::1]:8090\r\n", 0},
    {"GET / HTTP/1.1", "Host: [v1.x]\r\n", 0},
    {"GET / HTTP/1.1", "Host: a%2Db_c~d!$&'()*+,;=\r\n", 0},
    {"GET / HTTP/1.1", "Host: x:\r\n", 0}, /* port = *DIGIT */
    {"GET / HTTP/1.1", "Host:\r\n", 0},    /* empty is valid */
    {"GET / HTTP/1.1", "X: 1\r\nHost: a\r\nY: 2\r\n", 0},
    {"GET / HTTP/1.0", "", 0}, /* 1.0 needs none */
    {"GET / HTTP/1.0", "Host: a\r\n", 0},
    {"GET / HTTP/2.0", "", 0},                       /* not 1.x: 505 elsewhere */
    {"GET / HTTP/1.1", "", 400},                     /* missing */
    {"GET http://a/ HTTP/1.1", "", 400},             /* absolute-form too */
    {"GET http://a:8/x HTTP/1.1", "Host: b\r\n", 0}, /* the proxy sends a:8 as Host */
    {"GET http://[::1]:8/ HTTP/1.1", "Host: b\r\n", 0},
    {"GET http:///x HTTP/1.1", "Host: b\r\n", 400},   /* no host in the target */
    {"GET http://u@a/ HTTP/1.1", "Host: a\r\n", 400}, /* userinfo */
    {"GET http://a%zz/ HTTP/1.1", "Host: a\r\n", 400},
    {"GET / HTTP/1.2", "", 400},
    {"GET / HTTP/1.1", "Hostname: a\r\n", 400},
    {"GET / HTTP/1.1", "Host: a\r\nHost: a\r\n", 400}, /* repeated, even equal */
    {"GET / HTTP/1.0", "Host: a\r\nhost: b\r\n", 400},
    {"GET / HTTP/1.1", "Host: a b\r\n", 400},
    {"GET / HTTP/1.1", "Host: a/b\r\n", 400},
    {"GET / HTTP/1.1", "Host: user@a\r\n", 400},
    {"GET / HTTP/1.1", "Host: a:8x\r\n", 400},
    {"GET / HTTP/1.1", "Host: a:1:2\r\n", 400},
    {"GET / HTTP/1.1", "Host: a%2\r\n", 400},
    {"GET / HTTP/1.1", "Host: a%zz\r\n", 400},
    {"GET / HTTP/1.1", "Host: [::1\r\n", 400},
    {"GET / HTTP/1.1", "Host: []\r\n", 400},
    {"GET / HTTP/1.1", "Host: [::1]x\r\n", 400},
    {"GET / HTTP/1.1", "Host: caf\xc3\xa9\r\n", 400},
    {"GET / HTTP/1.0", "Host: a,b c\r\n", 400},
};

static void test_host(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof host_cases / sizeof host_cases[0]; i++) {
        const struct host_case *c = &host_cases[i];
        http_request_t req;
        parse_with(c->line, c->headers, &req);
        int r = http_check_host(&req);
        if (r != c->ret)
            fail_msg("Host check of \"%s\" + \"%s\" = %d, want %d", c->line, c->headers, r, c->ret);
    }
}

/* An absolute-form target's authority is kept (a proxy sends it as Host);
 * origin-form has none. */
static void test_authority(void **state)
{
    (void)state;
    static const struct {
        const char *line, *authority;
    } cases[] = {
        {"GET http://a.example:8080/p?q HTTP/1.1", "a.example:8080"},
        {"GET http://a.example HTTP/1.1", "a.example"},
        {"GET http://a.example?x=1 HTTP/1.1", "a.example"},
        {"GET https://[::1]:9/ HTTP/1.1", "[::1]:9"},
        {"GET http:///p HTTP/1.1", ""},
        {"GET /p HTTP/1.1", NULL},
        {"OPTIONS * HTTP/1.1", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http_request_t req;
        parse_with(cases[i].line, "Host: h\r\n", &req);
        const char *want = cases[i].authority;
        if (!want ? req.authority != NULL
                  : !req.authority || req.authority_len != strlen(want) ||
                        memcmp(req.authority, want, req.authority_len) != 0)
            fail_msg("\"%s\": authority \"%.*s\", want %s%s%s", cases[i].line,
                     req.authority ? (int)req.authority_len : 4,
                     req.authority ? req.authority : "NULL", want ? "\"" : "", want ? want : "NULL",
                     want ? "\"" : "");
    }
}

static void test_find_header_and_token(void **state)
{
    (void)state;
    http_request_t req;
    parse_with("GET / HTTP/1.1", "Host: a\r\nX-Y: 1\r\nx-y: 2\r\n", &req);
    const http_header_t *h = http_find_header(req.headers, req.num_headers, "X-y");
    assert_non_null(h);
    assert_memory_equal(h->value, "1", 1);
    assert_null(http_find_header(req.headers, req.num_headers, "X"));
    /* The fast path (memcmp on the canonical spelling) and the case-blind
     * one decide alike. */
    assert_true(http_name_is("Content-Length", 14, "Content-Length"));
    assert_true(http_name_is("content-LENGTH", 14, "Content-Length"));
    assert_false(http_name_is("Content-Lengtx", 14, "Content-Length"));
    assert_false(http_name_is("Content-Length", 13, "Content-Length"));
    assert_false(http_name_is("Content-Lengths", 15, "Content-Length"));
    assert_true(http_name_is("te", 2, "TE"));
    assert_true(http_has_token(" a , b,c ", 9, "B"));
    assert_true(http_has_token("a,,c", 4, "c"));
    assert_false(http_has_token("ab", 2, "a"));
    assert_false(http_has_token("", 0, "a"));
}

/* ---- chunked bodies ---- */

struct chunk_case {
    const char *in;
    size_t max_body;
    int ret;             /* final answer over the whole input */
    const char *decoded; /* when ret == 1 */
    int src;             /* raw bytes taken when ret == 1, -1 = all */
};

#define C(in, max_body, ret)                                                                       \
    {                                                                                              \
        in, max_body, ret, NULL, 0                                                                 \
    }

static const struct chunk_case chunk_cases[] = {
    {"5\r\nhello\r\n0\r\n\r\n", 100, 1, "hello", -1},
    {"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 100, 1, "hello world", -1},
    {"A\r\n0123456789\r\n0\r\n\r\n", 100, 1, "0123456789", -1},
    {"a;name=value\r\n0123456789\r\n0\r\n\r\n", 100, 1, "0123456789", -1},
    {"005\r\nhello\r\n000\r\n\r\n", 100, 1, "hello", -1},
    {"5\nhello\n0\n\n", 100, 1, "hello", -1},
    {"0\r\n\r\n", 100, 1, "", -1},
    {"0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", 100, 1, "", -1},
    {"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", 100, 1, "abc", 13},
    {"5\r\nhello\r\n0\r\n\r\n", 5, 1, "hello", -1},
    C("5\r\nhello\r\n0\r\n\r\n", 4, HTTP_TOO_LARGE),
    C("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5, HTTP_TOO_LARGE),
    C("1000000000000000\r\n", (size_t)-1, HTTP_TOO_LARGE),
    C("x\r\n", 100, HTTP_BAD),
    C("\r\n", 100, HTTP_BAD),
    C(";x\r\n", 100, HTTP_BAD),
    C("5\r\nhelloX\r\n", 100, HTTP_BAD),
    C("5\r\nhello\rX", 100, HTTP_BAD),
    C("1;\x01\r\n", 100, HTTP_BAD),
    /* RFC 9112 7.1: chunk-size = 1*HEXDIG, then only a chunk-ext or the line end */
    C("3zzz\r\nabc\r\n0\r\n\r\n", 100, HTTP_BAD), /* junk after the size */
    C("3 \r\nabc\r\n0\r\n\r\n", 100, HTTP_BAD),   /* BWS not followed by ';' */
    C("0x3\r\nabc\r\n0\r\n\r\n", 100, HTTP_BAD),
    C("-1\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD),
    C("3\rabc\r\n0\r\n\r\n", 100, HTTP_BAD),            /* bare CR after the size */
    C("1;a\rb\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD),       /* bare CR in an extension */
    C("1;a=\"b\rc\"\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD), /* bare CR in a quoted value */
    C("1;\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD),           /* ';' without a name */
    C("1;=v\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD),
    C("1;a=\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD), /* '=' without a value */
    C("1;a \r\nx\r\n0\r\n\r\n", 100, HTTP_BAD), /* BWS not followed by '=' or ';' */
    C("1;a=b c\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD),
    C("1;a=\"b\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD), /* unterminated quoted string */
    C("1;a=\"b\"c\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD),
    C("1;a@b\r\nx\r\n0\r\n\r\n", 100, HTTP_BAD),
    C("0\r\nX: a\rb\r\n\r\n", 100, HTTP_BAD), /* bare CR in a trailer */
    C("0\r\n\r\r\n", 100, HTTP_BAD),          /* bare CR before the last line end */
    C("0\r\nno colon\r\n\r\n", 100, HTTP_BAD),
    C("0\r\n: v\r\n\r\n", 100, HTTP_BAD),
    C("0\r\nX: a\x01\r\n\r\n", 100, HTTP_BAD),
    {"1 ;a\r\nx\r\n0\r\n\r\n", 100, 1, "x", -1}, /* BWS before ';' */
    {"1; a = b ; c\r\nx\r\n0\r\n\r\n", 100, 1, "x", -1},
    {"1;a=\"b;c\\\"d \"\r\nx\r\n0\r\n\r\n", 100, 1, "x", -1}, /* quoted-string, quoted-pair */
    {"1;a=b;c=\"\"\r\nx\r\n0;last\r\n\r\n", 100, 1, "x", -1},
    /* leading zeros are not significant digits: only 15 of those count */
    {"0000000000000001\r\nx\r\n0\r\n\r\n", 100, 1, "x", -1},
    {"00000000000000000000000000000003\r\nabc\r\n0000\r\n\r\n", 100, 1, "abc", -1},
    C("0000000000000001000000000000000\r\n", (size_t)-1, HTTP_TOO_LARGE),
    C("", 100, 0),
    C("5\r\nhel", 100, 0),
    C("5\r\nhello\r\n", 100, 0),
    C("5\r\nhello\r\n0\r\n", 100, 0),
    C("0\r\nX: 1\r\n", 100, 0),
};

/* Decode in[0..len) in two reads, the first ending at `split`, each in a
 * buffer ending at a guard page (as a server would see it: the bytes decoded
 * by the first call stay at the front). */
static int decode_split(const char *in, size_t len, size_t split, size_t max_body,
                        http_chunked_t *d, char *out, size_t outcap)
{
    memset(d, 0, sizeof *d);
    char *a = tguard_copy(in, split);
    int r = http_decode_chunked(d, a, split, max_body);
    assert_true(d->src <= split && d->dst <= d->src);
    if (r == 0 && split < len) {
        char *b = tguard_copy(in, len);
        memcpy(b, a, d->dst);
        r = http_decode_chunked(d, b, len, max_body);
        assert_true(d->src <= len && d->dst <= d->src);
        if (r == 1 && d->dst < outcap)
            memcpy(out, b, d->dst);
        tguard_free(b, len);
    } else if (r == 1 && d->dst < outcap) {
        memcpy(out, a, d->dst);
    }
    tguard_free(a, split);
    return r;
}

/* A proxy follows a chunked body without decoding it (http_scan_chunked):
 * over every case, fed in three pieces split anywhere, it ends where the
 * decoder ends, on the same raw byte, fails where it fails (but for the
 * body limit, which scanning has none of), and never writes. */
static void test_scan_chunked(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof chunk_cases / sizeof chunk_cases[0]; i++) {
        const struct chunk_case *c = &chunk_cases[i];
        size_t len = strlen(c->in);
        int want = c->ret;
        if (want == HTTP_TOO_LARGE && c->max_body != (size_t)-1)
            continue; /* a body limit: the scan has none, the 15-digit cap it keeps */
        for (size_t a = 0; a <= len; a++)
            for (size_t b = a; b <= len; b++) {
                char *buf = tguard_copy(c->in, len);
                size_t cut[4] = {0, a, b, len}, taken = 0, used = 0;
                http_chunked_t d;
                memset(&d, 0, sizeof d);
                int r = 0;
                for (int k = 0; k < 3 && r == 0; k++) {
                    r = http_scan_chunked(&d, buf + cut[k], cut[k + 1] - cut[k], &used);
                    assert_true(used <= cut[k + 1] - cut[k]);
                    taken = cut[k] + used;
                }
                if (r != want)
                    fail_msg("scan \"%s\" cut at %zu, %zu: %d, want %d", c->in, a, b, r, want);
                if (r == 1 && taken != (c->src < 0 ? len : (size_t)c->src))
                    fail_msg("scan \"%s\" cut at %zu, %zu: ends after %zu bytes", c->in, a, b,
                             taken);
                assert_memory_equal(buf, c->in, len);
                tguard_free(buf, len);
            }
    }
}

static void test_chunked(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof chunk_cases / sizeof chunk_cases[0]; i++) {
        const struct chunk_case *c = &chunk_cases[i];
        size_t len = strlen(c->in);
        for (size_t split = 0; split <= len; split++) {
            http_chunked_t d;
            char out[256];
            int r = decode_split(c->in, len, split, c->max_body, &d, out, sizeof out);
            if (r != c->ret)
                fail_msg("chunked \"%s\" split at %zu: %d, want %d", c->in, split, r, c->ret);
            if (r == 1) {
                size_t src = c->src < 0 ? len : (size_t)c->src;
                if (d.dst != strlen(c->decoded) || memcmp(out, c->decoded, d.dst) != 0 ||
                    d.src != src)
                    fail_msg("chunked \"%s\" split at %zu: decoded \"%.*s\" taking %zu", c->in,
                             split, (int)d.dst, out, d.src);
            }
        }
        /* And one byte at a time, in one buffer. */
        char *buf = tguard_copy(c->in, len);
        http_chunked_t d;
        memset(&d, 0, sizeof d);
        int r = 0;
        for (size_t k = 1; k <= len && r == 0; k++)
            r = http_decode_chunked(&d, buf, k, c->max_body);
        if (r != c->ret)
            fail_msg("chunked \"%s\" byte by byte: %d, want %d", c->in, r, c->ret);
        if (r == 1)
            assert_memory_equal(buf, c->decoded, d.dst);
        tguard_free(buf, len);
    }
}

/* Trailers can't grow without bound. */
static void test_chunked_trailer_limit(void **state)
{
    (void)state;
    size_t n = 20000;
    char *s = malloc(n);
    memcpy(s, "0\r\nX: ", 6);
    memset(s + 6, 'a', n - 6);
    http_chunked_t d;
    memset(&d, 0, sizeof d);
    char *g = tguard_copy(s, n);
    assert_int_equal(http_decode_chunked(&d, g, n, 100), HTTP_TOO_LARGE);
    tguard_free(g, n);
    free(s);
}

/* ---- query strings ---- */

struct query_case {
    const char *query; /* NULL: no query at all */
    const char *name;
    const char *value; /* NULL: not found */
};

static const struct query_case query_cases[] = {
    {"a=1&b=2", "a", "1"},  {"a=1&b=2", "b", "2"}, {"a=1&b=2", "c", NULL}, {"a=1&a=2", "a", "1"},
    {"aa=1&a=2", "a", "2"}, {"a", "a", ""},        {"a=", "a", ""},        {"=1&a=2", "a", "2"},
    {"&&a=3&", "a", "3"},   {"a=b=c", "a", "b=c"}, {"ms=10", "m", NULL},   {"ms=10", "ms=", NULL},
    {"x=%20", "x", "%20"},  {"", "a", NULL},       {NULL, "a", NULL},
};

/* The parse results are negative errnos, each its own, and none is one that
 * another function here returns for a failure: a caller can tell
 * http_query_get's "absent" from "partial" (they were -2 both once). */
static void test_results_are_errnos(void **state)
{
    (void)state;
    const int results[] = {HTTP_BAD, HTTP_PARTIAL, HTTP_TOO_LARGE};
    const int others[] = {-ENOENT, -EINVAL, -ENOMEM, -ERANGE};
    for (size_t i = 0; i < 3; i++) {
        assert_true(results[i] < 0);
        for (size_t j = 0; j < 3; j++)
            assert_true(i == j || results[i] != results[j]);
        for (size_t j = 0; j < sizeof others / sizeof others[0]; j++)
            assert_int_not_equal(results[i], others[j]);
    }
    assert_int_equal(HTTP_PARTIAL, -EAGAIN);
    const char *v;
    size_t vlen;
    assert_int_equal(http_query_get("a=1", 3, "b", &v, &vlen), -ENOENT);
    assert_int_not_equal(http_query_get("a=1", 3, "b", &v, &vlen), HTTP_PARTIAL);
    http_request_t req;
    assert_int_equal(http_parse_request("GET / HTTP/1.1\r\n", 16, HTTP_MAX_HEAD, &req), -EAGAIN);
    assert_int_equal(http_parse_request("GET / HTTP/1.1\r\n\r\n", 18, 10, &req), -EMSGSIZE);
    assert_int_equal(http_parse_request("GET\r\n\r\n", 7, HTTP_MAX_HEAD, &req), -EBADMSG);
}

static void test_query_get(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof query_cases / sizeof query_cases[0]; i++) {
        const struct query_case *c = &query_cases[i];
        size_t len = c->query ? strlen(c->query) : 0;
        char *g = c->query ? tguard_copy(c->query, len) : NULL;
        const char *v = NULL;
        size_t vlen = 0;
        int r = http_query_get(g, len, c->name, &v, &vlen);
        if (!c->value) {
            if (r != -ENOENT)
                fail_msg("query \"%s\" has \"%s\": %d", c->query, c->name, r);
        } else {
            if (r != 0 || vlen != strlen(c->value) || memcmp(v, c->value, vlen) != 0)
                fail_msg("query \"%s\" [%s] = %d \"%.*s\", want \"%s\"", c->query, c->name, r,
                         (int)vlen, v ? v : "", c->value);
            assert_true(v >= g && v + vlen <= g + len);
        }
        if (g)
            tguard_free(g, len);
    }
}

struct decode_case {
    const char *in;
    int plus;
    int ret; /* decoded length or -EINVAL */
    const char *out;
};

static const struct decode_case decode_cases[] = {
    {"", 0, 0, ""},
    {"abc", 0, 3, "abc"},
    {"a%20b", 0, 3, "a b"},
    {"a+b", 1, 3, "a b"},
    {"a+b", 0, 3, "a+b"},
    {"%41%4a%4A", 0, 3, "AJJ"},
    {"%2B+", 1, 2, "+ "},
    {"abc%41", 0, 4, "abcA"},
    {"%00", 0, 1, "\0"},
    {"%", 0, -EINVAL, NULL},
    {"%4", 0, -EINVAL, NULL},
    {"a%", 0, -EINVAL, NULL},
    {"%zz", 0, -EINVAL, NULL},
    {"%g0", 0, -EINVAL, NULL},
    {"%0g", 0, -EINVAL, NULL},
};

static void test_url_decode(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof decode_cases / sizeof decode_cases[0]; i++) {
        const struct decode_case *c = &decode_cases[i];
        size_t len = strlen(c->in);
        char *g = tguard_copy(c->in, len);
        char out[64];
        ssize_t r = http_url_decode(g, len, out, c->plus);
        if (r != c->ret || (r >= 0 && memcmp(out, c->out, (size_t)r) != 0))
            fail_msg("url_decode(\"%s\") = %zd", c->in, r);
        /* In place: dst == src. */
        r = http_url_decode(g, len, g, c->plus);
        if (r != c->ret || (r >= 0 && memcmp(g, c->out, (size_t)r) != 0))
            fail_msg("url_decode(\"%s\") in place = %zd", c->in, r);
        tguard_free(g, len);
    }
}

static void test_reason(void **state)
{
    (void)state;
    assert_string_equal(http_reason(200), "OK");
    assert_string_equal(http_reason(404), "Not Found");
    assert_string_equal(http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_reason(502), "Bad Gateway"); /* the proxy's */
    assert_string_equal(http_reason(299), "Unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_table),
        cmocka_unit_test(test_request_split),
        cmocka_unit_test(test_request_split_invalid),
        cmocka_unit_test(test_request_limits),
        cmocka_unit_test(test_response_table),
        cmocka_unit_test(test_body_framing),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_authority),
        cmocka_unit_test(test_find_header_and_token),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_chunked_trailer_limit),
        cmocka_unit_test(test_results_are_errnos),
        cmocka_unit_test(test_scan_chunked),
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_url_decode),
        cmocka_unit_test(test_reason),
    };
    return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
