#include "check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/proto.h"

enum { PH_START, PH_STREAM, PH_STREAM_END, PH_BODY, PH_CHUNKED, PH_UNTIL_CLOSE };

/* One line at buf: its length without the line end in *n. Returns the bytes
 * it takes with its line end, 0 when incomplete, CHECK_BAD when too long. */
static int take_line(const char *buf, size_t len, size_t *n)
{
    size_t scan = len < PROTO_MAX_LINE + 2 ? len : PROTO_MAX_LINE + 2;
    const char *nl = memchr(buf, '\n', scan);
    if (!nl)
        return len > PROTO_MAX_LINE + 1 ? CHECK_BAD : 0;
    *n = (size_t)(nl - buf);
    if (*n > 0 && buf[*n - 1] == '\r')
        (*n)--;
    return (int)(nl - buf) + 1;
}

static int line_is(const char *s, size_t n, const char *want)
{
    size_t wl = strlen(want);
    return n == wl && memcmp(s, want, wl) == 0;
}

static int check_line(check_state_t *st, const check_expect_t *e, const char *buf, size_t len,
                      int *done)
{
    size_t n = 0;
    int r;
    if (st->phase == PH_START && e->kind == CHECK_STREAM) {
        if (len == 0)
            return 0;
        if (e->n > 0 && buf[0] == 'A') {
            st->phase = PH_STREAM;
            st->left = e->n;
        } else {
            st->phase = PH_STREAM_END; /* STREAM 0, or an ERR instead of bytes */
        }
    }
    if (st->phase == PH_STREAM) {
        size_t k = len < st->left ? len : (size_t)st->left;
        for (size_t i = 0; i < k; i++)
            if (buf[i] != 'A')
                return CHECK_BAD; /* lost in the middle of the bytes */
        st->left -= k;
        if (st->left > 0)
            return (int)k;
        st->phase = PH_STREAM_END;
        r = check_line(st, e, buf + k, len - k, done);
        return r < 0 ? r : (int)k + r;
    }
    if ((r = take_line(buf, len, &n)) <= 0)
        return r;
    switch (e->kind) {
    case CHECK_PONG:
        st->outcome = line_is(buf, n, "PONG") ? CHECK_OK : CHECK_MISMATCH;
        break;
    case CHECK_DONE:
    case CHECK_STREAM:
        st->outcome = line_is(buf, n, "DONE") ? CHECK_OK : CHECK_MISMATCH;
        break;
    case CHECK_RESULT: {
        uint64_t x;
        st->outcome = n > 7 && memcmp(buf, "RESULT ", 7) == 0 &&
                              proto_parse_u64(buf + 7, n - 7, UINT64_MAX, &x) == 0 && x == e->n
                          ? CHECK_OK
                          : CHECK_MISMATCH;
        break;
    }
    default:
        st->outcome = CHECK_MISMATCH;
    }
    *done = 1;
    return r;
}

/* Compare body bytes as they arrive against the expected body. */
static void compare_body(check_state_t *st, const check_expect_t *e, const char *p, size_t k)
{
    if (!e->body || st->outcome != CHECK_OK)
        return;
    if (st->seen + k > e->body_len || memcmp(e->body + st->seen, p, k) != 0)
        st->outcome = CHECK_MISMATCH;
    st->seen += k;
}

static int check_http(check_state_t *st, const check_expect_t *e, char *buf, size_t len, int *done)
{
    switch (st->phase) {
    case PH_START: {
        http_response_t res;
        int head = http_parse_response(buf, len, HTTP_MAX_HEAD, &res);
        if (head == HTTP_PARTIAL)
            return 0;
        if (head < 0)
            return CHECK_BAD;
        if (res.status < 200 && res.status != 101)
            return head; /* an interim response (100 Continue): the real one follows */
        int64_t cl;
        int chunked;
        if (http_body_framing(res.headers, res.num_headers, &cl, &chunked) != 0)
            return CHECK_BAD;
        st->status = res.status;
        st->outcome = res.status >= 500 ? CHECK_5XX : res.status >= 400 ? CHECK_4XX : CHECK_OK;
        const http_header_t *c = http_find_header(res.headers, res.num_headers, "connection");
        if (res.major == 1 && res.minor == 0)
            st->close = !(c && http_has_token(c->value, c->value_len, "keep-alive"));
        else
            st->close = c && http_has_token(c->value, c->value_len, "close");
        if (e->head || res.status == 204 || res.status == 304) {
            *done = 1;
            return head;
        }
        if (st->outcome == CHECK_OK && e->body && cl >= 0 && (uint64_t)cl != e->body_len)
            st->outcome = CHECK_MISMATCH;
        if (chunked) {
            memset(&st->chunked, 0, sizeof st->chunked);
            st->phase = PH_CHUNKED;
        } else if (cl >= 0) {
            st->left = (uint64_t)cl;
            st->phase = PH_BODY;
        } else {
            st->close = 1;
            st->phase = PH_UNTIL_CLOSE;
        }
        if (st->phase == PH_BODY && st->left == 0) {
            compare_body(st, e, buf, 0);
            if (e->body && e->body_len != 0 && st->outcome == CHECK_OK)
                st->outcome = CHECK_MISMATCH;
            *done = 1;
        }
        return head;
    }
    case PH_BODY: {
        size_t k = len < st->left ? len : (size_t)st->left;
        compare_body(st, e, buf, k);
        st->left -= k;
        if (st->left == 0) {
            if (e->body && st->seen != e->body_len && st->outcome == CHECK_OK)
                st->outcome = CHECK_MISMATCH;
            *done = 1;
        }
        return (int)k;
    }
    case PH_CHUNKED: {
        int r = http_decode_chunked(&st->chunked, buf, len, HTTP_MAX_BODY);
        if (r < 0)
            return CHECK_BAD;
        if (r == 0)
            return 0; /* the whole body stays in the buffer until it is complete */
        compare_body(st, e, buf, st->chunked.dst);
        if (e->body && st->seen != e->body_len && st->outcome == CHECK_OK)
            st->outcome = CHECK_MISMATCH;
        *done = 1;
        return (int)st->chunked.src;
    }
    case PH_UNTIL_CLOSE:
        compare_body(st, e, buf, len);
        return (int)len;
    }
    return CHECK_BAD;
}

int check_response(check_state_t *st, const check_expect_t *e, char *buf, size_t len, int *done)
{
    *done = 0;
    if (len > INT32_MAX)
        len = INT32_MAX;
    return e->kind == CHECK_HTTP ? check_http(st, e, buf, len, done)
                                 : check_line(st, e, buf, len, done);
}

int check_eof(check_state_t *st)
{
    return st->phase == PH_UNTIL_CLOSE;
}

int check_expect_line(check_expect_t *e, const char *cmd)
{
    char line[128];
    proto_line_t pl;
    memset(e, 0, sizeof *e);
    if (snprintf(line, sizeof line, "%s\n", cmd) >= (int)sizeof line ||
        proto_parse_line(line, strlen(line), UINT64_MAX, &pl) <= 0)
        return -EINVAL;
    switch (pl.cmd) {
    case CMD_PING:
        e->kind = CHECK_PONG;
        return 0;
    case CMD_WAIT:
        e->kind = CHECK_DONE;
        return 0;
    case CMD_BURN:
        e->kind = CHECK_RESULT;
        e->n = proto_burn(pl.arg);
        return 0;
    case CMD_STREAM:
        e->kind = CHECK_STREAM;
        e->n = pl.arg;
        return 0;
    }
    return -EINVAL;
}

void check_expect_http(check_expect_t *e, const char *method, const char *path, char *store)
{
    const char *q = strchr(path, '?');
    size_t plen = q ? (size_t)(q - path) : strlen(path);
    const char *v;
    size_t vlen;
    uint64_t n;

    memset(e, 0, sizeof *e);
    e->kind = CHECK_HTTP;
    e->head = strcmp(method, "HEAD") == 0;
    if (strcmp(method, "GET") != 0)
        return;
    if (plen == 5 && memcmp(path, "/ping", 5) == 0) {
        e->body = "PONG\n";
    } else if (plen == 5 && memcmp(path, "/wait", 5) == 0) {
        e->body = "DONE\n";
    } else if (plen == 5 && memcmp(path, "/burn", 5) == 0 && q &&
               http_query_get(q + 1, strlen(q + 1), "n", &v, &vlen) == 0 &&
               proto_parse_u64(v, vlen, PROTO_BURN_MAX, &n) == 0) {
        snprintf(store, 32, "RESULT %" PRIu64 "\n", proto_burn(n));
        e->body = store;
    }
    if (e->body)
        e->body_len = strlen(e->body);
}
