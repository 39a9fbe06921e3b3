/* libFuzzer target: the load generator's response checkers (loadgen/check.c),
 * fed the way its engine feeds them: a connection's input buffer (buf_t) that
 * bytes are appended to, the checker called while it takes bytes, what it
 * took consumed, the rest passed again with more after it.
 *
 * The input's first byte chooses what was asked (a line command or an HTTP
 * method and path) and how many requests are in flight; the second seeds the
 * sizes of the pieces the answers arrive in; the rest is what the server
 * sent. Invariants:
 *   - a checker never takes more than it was given, and its verdicts are
 *     among the outcomes;
 *   - the verdicts (outcome, status, close), and whether the stream became
 *     unreadable, are the same whether it arrives at once or in pieces;
 *   - at the end of the input, check_eof says the same both ways.
 * Build and run: make fuzz. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "loadgen/check.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const line_cmds[] = {"PING",     "WAIT 5",   "BURN 3",      "BURN 1000",
                                        "STREAM 0", "STREAM 7", "STREAM 5000", "WAIT 0"};
static const char *const methods[] = {"GET", "HEAD", "POST"};
static const char *const paths[] = {
    "/",         "/ping",       "/wait?ms=5", "/burn?n=3", "/burn?x=1&n=1000",
    "/burn?n=x", "/stream?n=5", "/other"};

#define MAX_VERDICTS 64

typedef struct run {
    int verdicts[MAX_VERDICTS][3]; /* outcome, status, close */
    size_t n;
    int bad; /* CHECK_BAD: the stream could not be framed any more (a checker
                         may take the bytes before the fault first: where is not compared) */
    int eof; /* check_eof at the end of the input */
} run_t;

/* The engine's loop over one connection's input after a read. Returns 0 to
 * go on reading, 1 when the connection is done with (closed or unreadable). */
static int feed(run_t *r, check_state_t *st, const check_expect_t *e, buf_t *in, size_t *left)
{
    while (*left > 0 && buf_used(in) > 0) {
        int done = 0;
        size_t have = buf_used(in);
        int n = check_response(st, e, buf_head(in), have, &done);
        if (n < 0) {
            r->bad = 1;
            return 1;
        }
        CHECK((size_t)n <= have);
        buf_consume(in, (size_t)n);
        if (!done) {
            if (n == 0)
                return 0;
            continue;
        }
        CHECK(st->outcome >= CHECK_OK && st->outcome <= CHECK_5XX);
        if (r->n < MAX_VERDICTS) {
            r->verdicts[r->n][0] = st->outcome;
            r->verdicts[r->n][1] = e->kind == CHECK_HTTP ? st->status : 0;
            r->verdicts[r->n][2] = st->close;
        }
        r->n++;
        int close = st->close;
        check_reset(st);
        (*left)--;
        if (close)
            return 1;
    }
    return 0;
}

/* Deliver p[0..len) in pieces: all at once when seed is 0, else of sizes
 * drawn from a generator seeded by it. */
static void run(run_t *r, const check_expect_t *e, size_t inflight, const char *p, size_t len,
                unsigned seed)
{
    buf_t in = {0};
    check_state_t st;
    memset(&st, 0, sizeof st);
    memset(r, 0, sizeof *r);
    size_t off = 0, left = inflight;
    uint32_t x = seed * 2654435761u + 1;
    int over = 0;
    while (off < len && !over) {
        size_t piece = len - off;
        if (seed) {
            x = x * 1664525u + 1013904223u;
            size_t k = 1 + (x >> 24) % 64;
            piece = k < piece ? k : piece;
        }
        CHECK(buf_reserve(&in, piece, (size_t)-1) == 0);
        memcpy(in.data + in.len, p + off, piece);
        in.len += piece;
        off += piece;
        over = feed(r, &st, e, &in, &left);
    }
    if (!over && left > 0)
        r->eof = check_eof(&st);
    buf_free(&in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    unsigned what = data[0], seed = data[1] | 1;
    check_expect_t e;
    char store[32];
    if (what & 0x80) {
        check_expect_http(&e, methods[(what >> 3) % 3], paths[what & 7], store);
    } else {
        CHECK(check_expect_line(&e, line_cmds[what & 7]) == 0);
    }
    size_t inflight = 1 + ((what >> 5) & 3) * 3;

    /* The checker decodes chunked bodies in place: each run gets its own copy. */
    size_t len = size - 2;
    char *a = malloc(len + 1), *b = malloc(len + 1);
    CHECK(a && b);
    memcpy(a, data + 2, len);
    memcpy(b, data + 2, len);
    run_t whole, pieces;
    run(&whole, &e, inflight, a, len, 0);
    run(&pieces, &e, inflight, b, len, seed);
    free(a);
    free(b);

    CHECK(whole.n == pieces.n && whole.bad == pieces.bad && whole.eof == pieces.eof);
    size_t n = whole.n < MAX_VERDICTS ? whole.n : MAX_VERDICTS;
    CHECK(memcmp(whole.verdicts, pieces.verdicts, n * sizeof whole.verdicts[0]) == 0);
    return 0;
}
