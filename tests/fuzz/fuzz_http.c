/* libFuzzer target: the HTTP request and response parsers and the chunked
 * decoder, asserting invariants on what they parsed:
 *   - a return is a status code or a head length within the input and the limit;
 *   - every field points inside the head; counts stay within their arrays;
 *   - a valid head cut one byte short is partial;
 *   - the chunked decoder gives the same body whether its input arrives at
 *     once or in two pieces, never writing or taking more than it was given;
 *   - scanning the body in two pieces (a proxy passing it on) ends on the same
 *     byte as decoding it, and fails alike but for the body limit;
 *   - the Host rule answers 0 or 400, and 400 to HTTP/1.1 without Host.
 * Build and run: make fuzz. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/http.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void within(const char *base, size_t len, const char *p, size_t n)
{
    if (p)
        CHECK(p >= base && n <= len && p + n <= base + len);
}

static void check_headers(const char *buf, int r, const http_header_t *h, size_t n)
{
    CHECK(n <= HTTP_MAX_HEADERS);
    for (size_t i = 0; i < n; i++) {
        CHECK(h[i].name_len > 0);
        within(buf, (size_t)r, h[i].name, h[i].name_len);
        within(buf, (size_t)r, h[i].value, h[i].value_len);
        /* A value carries no line end and no surrounding blanks. */
        for (size_t k = 0; k < h[i].value_len; k++)
            CHECK(h[i].value[k] != '\r' && h[i].value[k] != '\n');
        if (h[i].value_len)
            CHECK(h[i].value[0] != ' ' && h[i].value[h[i].value_len - 1] != ' ');
    }
}

/* Decode a chunked body at once and in two pieces; the results must agree. */
static void check_chunked(const char *body, size_t len, size_t split)
{
    char *a = malloc(len + 1), *b = malloc(len + 1);
    memcpy(a, body, len);
    memcpy(b, body, len);
    http_chunked_t da = {0}, db = {0};
    int ra = http_decode_chunked(&da, a, len, 4096);
    CHECK(ra == 0 || ra == 1 || ra == HTTP_BAD || ra == HTTP_TOO_LARGE);
    CHECK(da.dst <= da.src && da.src <= len);
    if (ra == 1)
        CHECK(da.dst <= 4096);

    split = len ? split % (len + 1) : 0;
    int rb = http_decode_chunked(&db, b, split, 4096);
    CHECK(db.dst <= db.src && db.src <= split);
    if (rb == 0)
        rb = http_decode_chunked(&db, b, len, 4096);
    CHECK(rb == ra);
    if (ra == 1) {
        CHECK(db.src == da.src && db.dst == da.dst);
        CHECK(memcmp(a, b, da.dst) == 0);
    }

    /* The scan has no body limit: compared with a decode that has none. */
    http_chunked_t dc = {0}, ds = {0};
    memcpy(a, body, len);
    int rc = http_decode_chunked(&dc, a, len, (size_t)-1);
    size_t used = 0, end;
    int rs = http_scan_chunked(&ds, body, split, &used);
    CHECK(used <= split);
    end = used;
    if (rs == 0) {
        CHECK(used == split);
        rs = http_scan_chunked(&ds, body + split, len - split, &used);
        CHECK(used <= len - split);
        end = split + used;
    }
    CHECK(rs == rc);
    if (rs == 1)
        CHECK(end == dc.src);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    size_t max_head = size > 0 && data[0] == 'X' ? 64 : HTTP_MAX_HEAD; /* reach the limit too */

    http_request_t req;
    int r = http_parse_request(buf, size, max_head, &req);
    CHECK(r == HTTP_BAD || r == HTTP_PARTIAL || r == HTTP_TOO_LARGE || r > 0);
    if (r == HTTP_PARTIAL)
        CHECK(size < max_head);
    if (r > 0) {
        CHECK((size_t)r <= size && (size_t)r <= max_head);
        CHECK(buf[r - 1] == '\n');
        CHECK(req.method_len > 0);
        within(buf, (size_t)r, req.method, req.method_len);
        CHECK(req.path_len > 0);
        if (!(req.path_len == 1 && req.path[0] == '/'))
            within(buf, (size_t)r, req.path, req.path_len);
        within(buf, (size_t)r, req.query, req.query_len);
        within(buf, (size_t)r, req.authority, req.authority_len);
        CHECK(req.major >= 0 && req.major <= 9 && req.minor >= 0 && req.minor <= 9);
        check_headers(buf, r, req.headers, req.num_headers);

        /* One byte short of a valid head is partial. */
        http_request_t again;
        CHECK(http_parse_request(buf, (size_t)r - 1, max_head, &again) == HTTP_PARTIAL);

        int64_t cl;
        int chunked;
        int st = http_body_framing(req.headers, req.num_headers, &cl, &chunked);
        CHECK(st == 0 || st == 400 || st == 501);
        if (st == 0) {
            CHECK(!(chunked && cl >= 0));
            if (chunked)
                check_chunked(buf + r, size - (size_t)r, (size_t)req.method_len * 7);
        }
        (void)http_keep_alive(&req);
        int host = http_check_host(&req);
        CHECK(host == 0 || host == 400);
        if (req.major == 1 && req.minor >= 1 &&
            !http_find_header(req.headers, req.num_headers, "host"))
            CHECK(host == 400);

        const char *v;
        size_t vlen;
        if (http_query_get(req.query, req.query_len, "n", &v, &vlen) == 0) {
            within(req.query, req.query_len, v, vlen);
            char out[8192];
            if (vlen <= sizeof out) {
                ssize_t d = http_url_decode(v, vlen, out, 1);
                CHECK(d == -EINVAL || (d >= 0 && (size_t)d <= vlen));
            }
        }
    }

    http_response_t res;
    r = http_parse_response(buf, size, max_head, &res);
    CHECK(r == HTTP_BAD || r == HTTP_PARTIAL || r == HTTP_TOO_LARGE || r > 0);
    if (r > 0) {
        CHECK((size_t)r <= size && (size_t)r <= max_head);
        CHECK(res.status >= 100 && res.status <= 599);
        check_headers(buf, r, res.headers, res.num_headers);
    }

    /* The whole input as a chunked body, split where its size says. */
    check_chunked(buf, size, size / 3);
    return 0;
}
