/* libFuzzer target: a whole session (servers/core/session.c), driven the way
 * the event loops drive it, through a socketpair, with no loop and no real
 * waiting (the clock is fake_clock_ms).
 *
 * The input is a script. Its first bytes choose the configuration (protocol,
 * BURN offloading, a small socket buffer, limits, timeouts, write_each,
 * json_errors, external I/O: the harness receives and sends for the session
 * as io_uring's completions would, through session_on_input and
 * session_take_output/session_sent, and now and then hands it bytes it did
 * not ask for, as a receive the design could not stop in time); then each op either adds to what the client will send (a
 * valid request the harness frames itself and knows the answer of, or junk),
 * or moves things: deliver the next n bytes of it (so requests are split
 * wherever the input says), read n bytes of answers, move the clock, finish a
 * worker's BURN or an extension's deferred answer, half-close, reset, shut
 * down, or report a socket error. At the end the client sends the rest and a
 * FIN, and everything is run to completion.
 *
 * Invariants, beyond no crash and no leak (LeakSanitizer):
 *   - every valid request sent before the first junk that the session took
 *     is answered exactly as the protocol says, once and in order (an HTTP
 *     answer is checked for its status, body and Connection header); when a
 *     timeout, a shutdown or a socket error came, what it had taken by then;
 *   - when nothing disturbed the connection (no junk, socket error, shutdown
 *     or timeout), every such request fully sent is answered, and nothing
 *     else; after a header timeout, only its 408 (or ERR timeout) may follow;
 *   - a session whose BURN a worker has, or whose answer an extension holds,
 *     is never closed under it: a dead one is SESS_GONE until the work comes
 *     back (issue 11, defect 2), and only such a session is ever gone;
 *   - the session always comes to an end: no livelock, no hang.
 * Build and run: make fuzz. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/proto.h"
#include "core/session.h"
#include "fake_clock.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* FUZZ_TRACE=1 in the environment: say what each op does (to read a crash). */
static int trace;
#define TRACE(...) (trace ? fprintf(stderr, __VA_ARGS__) : 0)

const char *__asan_default_options(void);

/* A small quarantine: every run allocates fresh buffers, and touching new
 * pages for them (page faults) cost more than the session itself. */
const char *__asan_default_options(void)
{
    return "quarantine_size_mb=16";
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    trace = getenv("FUZZ_TRACE") != NULL;
    return 0;
}

static void trace_bytes(const char *what, const char *p, size_t n)
{
    if (!trace)
        return;
    fprintf(stderr, "%s (%zu bytes): \"", what, n);
    for (size_t i = 0; i < n && i < 4000; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n')
            fputs("\\n", stderr);
        else if (c == '\r')
            fputs("\\r", stderr);
        else if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputs(n > 4000 ? "\"...\n" : "\"\n", stderr);
}

#define MAX_OPS    256
#define MAX_ANS    96
#define OUT_CAP    (512 << 10) /* a client reads at most this much, then resets */
#define MAX_ROUNDS 20000       /* of the final run; more is a livelock */

/* ---- the input, read as a script ---- */

typedef struct script {
    const uint8_t *p;
    size_t n;
} script_t;

static unsigned take(script_t *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

static unsigned take16(script_t *in)
{
    unsigned lo = take(in);
    return lo | take(in) << 8;
}

/* ---- what the client sent, and what it expects ---- */

typedef struct answer {
    int status;     /* HTTP; 0 for the line protocol */
    int head;       /* HTTP HEAD: a Content-Length but no body */
    int any_body;   /* /metrics: the body is not compared */
    int closes;     /* the server closes after this answer */
    int keep_alive; /* HTTP/1.0 kept alive: "Connection: keep-alive" */
    buf_t body;     /* HTTP body, or the line protocol's whole answer */
    size_t end;     /* offset in the request stream just past the request */
} answer_t;

typedef struct harness {
    session_cfg_t cfg;
    session_t *s; /* NULL once closed */
    int fd;       /* the client's end; -1 after a reset */
    int http;     /* the protocol of the valid requests */
    buf_t req;    /* everything the client will send */
    size_t sent;  /* bytes of it delivered */
    buf_t out;    /* everything the server answered */
    answer_t ans[MAX_ANS];
    size_t nans;
    int frozen;              /* junk or a closing request was framed: expect no more */
    int junk;                /* junk (or more requests than are tracked) was sent */
    int disturbed;           /* a socket error, a shutdown, a timeout or a reset */
    int abrupt;              /* ... of a kind that may cut an answer short or drop it */
    int timed_out;           /* ... a header timeout: one 408 or "ERR timeout" may follow */
    int shut;                /* ... a shutdown: answers from then on say "Connection: close" */
    size_t must;             /* answers due in any case: those the session had taken when
                           the first disturbance came (all of them when none came) */
    int fin;                 /* the client half-closed */
    size_t nexp;             /* answers expected (those fully sent before a FIN) */
    int wants;               /* the last SESS_* bits */
    int unwatched;           /* gone (SESS_GONE) while its work is held: no more events */
    int work;                /* a worker has the session's BURN */
    uint8_t refuse[MAX_ANS]; /* for each offloaded BURN framed, in order: refused? */
    size_t nrefuse, irefuse;
    int deferred; /* the extension holds an answer */
    buf_t defer_body;
    buf_t tx; /* external I/O: the output taken from the session, being sent */
} harness_t;

static void put(buf_t *b, const void *p, size_t n)
{
    if (n) /* p may be the NULL of an empty buffer */
        CHECK(buf_append(b, p, n) == 0);
}

static void put_str(buf_t *b, const char *s)
{
    put(b, s, strlen(s));
}

/* n bytes of c (one call: a loop of put() costs more than the session does). */
static void fill(buf_t *b, char c, size_t n)
{
    CHECK(buf_reserve(b, n + 1, (size_t)-1) == 0);
    memset(b->data + b->len, c, n);
    b->len += n;
}

/* A new expected answer for the request just framed (req.len is its end). */
static answer_t *expect(harness_t *h)
{
    if (h->nans == MAX_ANS)
        h->frozen = h->junk = 1; /* more than are tracked: no longer predicted */
    if (h->frozen)
        return NULL;
    answer_t *a = &h->ans[h->nans++];
    memset(a, 0, sizeof *a);
    a->end = h->req.len;
    return a;
}

/* ---- framing valid requests ---- */

enum { K_FIXED, K_BURN, K_STREAM, K_ANY, K_ECHO }; /* how the answer is known */

/* Line commands: the word, then (when range) a number from the script, v %
 * range + base; the answer (K_FIXED) or how to compute it. */
static const struct line_kind {
    const char *word;
    unsigned range, base;
    int kind;
    const char *answer;
} line_kinds[] = {
    {"PING", 0, 0, K_FIXED, "PONG\n"},
    {"ping", 0, 0, K_FIXED, "PONG\n"},
    {"WAIT ", 200, 0, K_FIXED, "DONE\n"},
    {"WAIT 0", 0, 0, K_FIXED, "DONE\n"},
    {"BURN ", 2000, 0, K_BURN, NULL},
    {"STREAM ", 5000, 0, K_STREAM, "DONE\n"},
    {"FOO ", 65536, 0, K_FIXED, "ERR unknown command\n"},
    {"", 0, 0, K_FIXED, "ERR empty command\n"},
    {"WAIT x", 65536, 0, K_FIXED, "ERR bad number\n"},
    {"WAIT ", 65536, 60001, K_FIXED, "ERR number out of range\n"},
    {"STREAM", 0, 0, K_FIXED, "ERR missing number\n"},
    {"PING ", 65536, 0, K_FIXED, "ERR bad number\n"},
};

/* A BURN of n steps was framed: its answer, RESULT or (when offloaded and
 * the script says the worker queue refuses it) the refusal. */
static const char *burn_answer(harness_t *h, uint64_t n, unsigned v, char *text, size_t cap,
                               const char *busy)
{
    int refused = 0;
    if (h->cfg.offload_min && n >= h->cfg.offload_min && h->nrefuse < MAX_ANS)
        refused = h->refuse[h->nrefuse++] = (uint8_t)(v >> 15);
    snprintf(text, cap, "RESULT %llu\n", (unsigned long long)proto_burn(n));
    return refused ? busy : text;
}

static void frame_line(harness_t *h, script_t *in)
{
    unsigned k = take(in), v = take16(in);
    const struct line_kind *lk = &line_kinds[k % (sizeof line_kinds / sizeof line_kinds[0])];
    uint64_t n = lk->range ? lk->base + v % lk->range : 0;
    char num[24], text[32];
    put_str(&h->req, lk->word);
    if (lk->range) {
        snprintf(num, sizeof num, "%llu", (unsigned long long)n);
        put_str(&h->req, num);
    }
    put_str(&h->req, (k & 0x80) ? "\r\n" : "\n");
    const char *answer = lk->answer;
    if (lk->kind == K_BURN)
        answer = burn_answer(h, n, v, text, sizeof text, "ERR server busy\n");
    answer_t *a = expect(h);
    if (!a)
        return;
    if (lk->kind == K_STREAM)
        fill(&a->body, 'A', n);
    put_str(&a->body, answer);
}

/* A body for POST, as Content-Length or chunked with extensions and trailers. */
static void frame_body(harness_t *h, script_t *in, int chunked, const char *eol, buf_t *body)
{
    size_t n = take(in) % 64;
    if (take(in) & 1)
        n *= 37; /* up to 2.3 KB */
    CHECK(buf_reserve(body, n + 1, (size_t)-1) == 0);
    for (size_t i = 0; i < n; i++)
        body->data[i] = (char)('a' + (i * 7 + n) % 26);
    body->len = n;
    char line[128];
    if (!chunked) {
        snprintf(line, sizeof line, "Content-Length: %zu%s%s", n, eol, eol);
        put_str(&h->req, line);
        put(&h->req, body->data, n);
        return;
    }
    snprintf(line, sizeof line, "Transfer-Encoding: chunked%s%s", eol, eol);
    put_str(&h->req, line);
    for (size_t off = 0; off <= n;) {
        unsigned k = take(in);
        size_t c = off == n ? 0 : 1 + k % (n - off < 300 ? n - off : 300);
        if (c > n - off)
            c = n - off;
        const char *ext = (k & 0x30) == 0x10   ? ";a=b"
                          : (k & 0x30) == 0x20 ? " ; q = \"x\\\"y;z\" ;n"
                                               : "";
        snprintf(line, sizeof line, "%s%zx%s%s", (k & 0x40) ? "000" : "", c, ext, eol);
        put_str(&h->req, line);
        if (c == 0) {
            if (k & 0x80) { /* trailers */
                snprintf(line, sizeof line, "X-Trailer: %u%sT:%s", k, eol, eol);
                put_str(&h->req, line);
            }
            put_str(&h->req, eol);
            break;
        }
        put(&h->req, body->data + off, c);
        put_str(&h->req, eol);
        off += c;
    }
}

/* HTTP requests: the target (a number from the script after it when range),
 * POST or GET/HEAD, and the answer. */
static const struct http_kind {
    const char *target;
    unsigned range;
    int post;
    int kind;
    int status;
    const char *body;
} http_kinds[] = {
    {"/", 0, 0, K_FIXED, 200, "hello, world\n"},
    {"/ping", 0, 0, K_FIXED, 200, "PONG\n"},
    {"/wait?ms=", 200, 0, K_FIXED, 200, "DONE\n"},
    {"/burn?x=1&n=", 2000, 0, K_BURN, 200, NULL},
    {"/stream?n=", 5000, 0, K_STREAM, 200, NULL},
    {"/healthz", 0, 0, K_FIXED, 200, "ok\n"},
    {"/metrics", 0, 0, K_ANY, 200, NULL},
    {"/nope", 65536, 0, K_FIXED, 404, "not found\n"},
    {"/wait?ms=x", 0, 0, K_FIXED, 400, "ms must be an integer from 0 to 60000\n"},
    {"/ping", 0, 1, K_FIXED, 405, "method not allowed\n"},
    {"/stream?n=4294967297", 0, 0, K_FIXED, 400, "n must be an integer from 0 to 4294967296\n"},
    {"/ext", 0, 1, K_ECHO, 200, NULL},
    {"/defer", 0, 1, K_ECHO, 200, NULL},
};

static void frame_http(harness_t *h, script_t *in)
{
    unsigned k = take(in), f = take(in), v = take16(in);
    const struct http_kind *hk = &http_kinds[k % (sizeof http_kinds / sizeof http_kinds[0])];
    const char *eol = (f & 1) ? "\n" : "\r\n";
    int head = !hk->post && (f & 2), v10 = (f & 0x0c) == 0x0c, absolute = (f & 0x30) == 0x30;
    int conn = (f >> 6) & 3; /* 1: close, 2: keep-alive, else no Connection header */
    uint64_t n = hk->range ? v % hk->range : 0;
    char line[160], text[32];
    buf_t posted = {0};

    snprintf(line, sizeof line, "%s %s%s",
             hk->post ? "POST"
             : head   ? "HEAD"
                      : "GET",
             absolute ? "http://x" : "", hk->target);
    put_str(&h->req, line);
    if (hk->range) {
        snprintf(line, sizeof line, "%llu", (unsigned long long)n);
        put_str(&h->req, line);
    }
    put_str(&h->req, v10 ? " HTTP/1.0" : " HTTP/1.1");
    put_str(&h->req, eol);
    if (!v10 || (f & 0x10)) { /* HTTP/1.0 may go without Host */
        snprintf(line, sizeof line, "Host: %s%s", (k & 0x80) ? "127.0.0.1:8090" : "x", eol);
        put_str(&h->req, line);
    }
    if (conn == 1 || conn == 2) {
        snprintf(line, sizeof line, "Connection: %s%s", conn == 1 ? "close" : "keep-alive", eol);
        put_str(&h->req, line);
    }
    if (k & 0x40) { /* padding: heads of many sizes */
        put_str(&h->req, "X-Pad: ");
        fill(&h->req, 'p', (v % 64) * 61);
        put_str(&h->req, eol);
    }
    if (hk->post)
        frame_body(h, in, (v >> 14) & 1, eol, &posted);
    else
        put_str(&h->req, eol);

    int status = hk->status;
    const char *body = hk->body;
    if (hk->kind == K_BURN) {
        body = burn_answer(h, n, v, text, sizeof text, "server busy\n");
        status = body == text ? 200 : 503;
    }
    int keep = v10 ? conn == 2 : conn != 1;
    answer_t *a = expect(h);
    if (!keep)
        h->frozen = 1; /* what follows is not answered */
    if (a) {
        a->status = status;
        a->head = head;
        a->any_body = hk->kind == K_ANY;
        a->closes = !keep;
        a->keep_alive = v10 && keep;
        if (hk->kind == K_STREAM) {
            fill(&a->body, 'A', n);
        } else if (hk->kind == K_ECHO) {
            a->body = posted; /* echoed by the extension, now or deferred */
            posted = (buf_t){0};
        } else if (body) {
            put_str(&a->body, body);
        }
    }
    buf_free(&posted);
}

/* Requests each refused in its own way, and line commands that are valid but
 * not framed by frame_line (endless, long, at the limits). */
static const char *const bad_http[] = {
    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "GET / HTTP/2.0\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
    "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3zzz\r\nabc\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a\rb\r\nx\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\n",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    "POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", /* + a run of '0'... */
    "GET /burn?n=999999 HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /stream?n=4294967296 HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /wait?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n",
};
static const char *const odd_line[] = {
    "STREAM 4294967296\n", "WAIT 60000\n",   "BURN 5000\n",
    "BURN 5001\n",         "STREAM 65536\n", "GET / HTTP/1.1\r\n\r\n",
};

/* Junk: bytes from the input (mostly), a long run of one byte (to reach the
 * limits), a valid request of the other protocol, or a request or command
 * from the tables above. */
static void frame_junk(harness_t *h, script_t *in)
{
    unsigned k = take(in) % 8;
    h->junk = h->frozen = 1;
    if (k == 2) {
        unsigned i = take(in);
        put_str(&h->req, h->http ? bad_http[i % (sizeof bad_http / sizeof bad_http[0])]
                                 : odd_line[i % (sizeof odd_line / sizeof odd_line[0])]);
    } else if (k == 0) {
        /* past the 4 KiB line, the 8 KiB head, the input buffer of a 4 KiB body limit */
        size_t n = 1 + (take16(in) & 0x7fff);
        fill(&h->req, (char)take(in), n);
    } else if (k == 1) {
        h->http = !h->http;
        if (h->http)
            frame_http(h, in);
        else
            frame_line(h, in);
        h->http = !h->http;
    } else {
        size_t n = take(in) % 48;
        n = n < in->n ? n : in->n;
        put(&h->req, in->p, n);
        in->p += n;
        in->n -= n;
    }
}

/* ---- the extension: /ext answers with the body, /defer later ---- */

static int ext(session_t *s, const http_request_t *req, const char *body, size_t len, void *ctx)
{
    harness_t *h = ctx;
    if (req->path_len == 4 && memcmp(req->path, "/ext", 4) == 0) {
        session_respond(s, 200, "application/octet-stream", body, len);
        return 1;
    }
    if (req->path_len == 6 && memcmp(req->path, "/defer", 6) == 0) {
        CHECK(!h->deferred); /* the session asks for nothing more while one is held */
        h->defer_body.off = h->defer_body.len = 0;
        put(&h->defer_body, body, len);
        h->deferred = 1;
        session_defer(s);
        return 1;
    }
    return 0;
}

/* ---- driving the session as an event loop would ---- */

/* Something that ends the connection early is about to happen: from now on
 * only the answers to requests the session has already taken are due (none
 * when it may drop what it holds: `abrupt`). */
static void disturb(harness_t *h, int abrupt)
{
    h->abrupt |= abrupt;
    if (h->disturbed) {
        if (abrupt)
            h->must = 0; /* what was due may now be dropped */
        return;
    }
    h->disturbed = 1;
    size_t taken = 0;
    if (!abrupt && h->s) {
        int unread = 0;
        CHECK(ioctl(h->s->fd, FIONREAD, &unread) == 0);
        taken = h->sent - (size_t)unread - buf_used(&h->s->in);
    }
    size_t m = 0;
    while (m < h->nans && h->ans[m].end <= taken)
        m++;
    h->must = m;
}

/* The client goes away without reading everything. */
static void reset(harness_t *h)
{
    disturb(h, 1);
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
}

/* Act on the SESS_* bits, as the reactor's apply() does. */
static void apply(harness_t *h, int w)
{
    while (w & SESS_WORK) {
        CHECK(!h->work && !(w & SESS_CLOSE));
        int refused = h->irefuse < h->nrefuse ? h->refuse[h->irefuse] : 0;
        h->irefuse++;
        if (!refused) {
            h->work = 1;
            break;
        }
        w = session_on_work_refused(h->s);
    }
    if (w & SESS_CLOSE) {
        /* One owner: a session is never freed while a worker or the
         * extension still holds it. */
        CHECK(!h->work && !h->deferred);
        session_close(h->s);
        free(h->s);
        h->s = NULL;
        return;
    }
    if (w & SESS_GONE) {
        /* Dead but held: kept, unwatched and without a timer, until the
         * work or the answer comes back. Only a held session is kept. */
        CHECK(h->work || h->deferred);
        h->unwatched = 1;
        h->wants = 0;
        return;
    }
    h->wants = w;
}

/* External I/O: one receive of what has arrived, handed to the session
 * (asked for or not). Returns 1 when something happened (bytes, the end,
 * an error). */
static int receive(harness_t *h)
{
    char tmp[4096]; /* a provided buffer's size */
    ssize_t r = recv(h->s->fd, tmp, sizeof tmp, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    if (r < 0)
        disturb(h, 1);
    apply(h, session_on_input(h->s, tmp, r < 0 ? -errno : r));
    return 1;
}

/* External I/O, as the io_uring design moves the bytes: the output is taken
 * whole and sent as the socket takes it, and what arrives is received while
 * the session wants to read. Returns the number of events. */
static int pump_external(harness_t *h)
{
    int events = 0;
    for (int i = 0; i < 64 && h->s && !h->unwatched; i++) {
        int moved = 0;
        if (!buf_used(&h->tx))
            session_take_output(h->s, &h->tx);
        if (buf_used(&h->tx)) {
            ssize_t w =
                send(h->s->fd, buf_head(&h->tx), buf_used(&h->tx), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0 || (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                if (w < 0)
                    disturb(h, 1);
                apply(h, session_sent(h->s, &h->tx, w < 0 ? -errno : w));
                moved = 1;
            }
        }
        if (h->s && !h->unwatched && (h->wants & SESS_READ))
            moved |= receive(h);
        if (!moved)
            break;
        events++;
    }
    return events;
}

/* Dispatch what the socket is ready for, as epoll would report it, until
 * nothing is. Returns the number of events. */
static int pump(harness_t *h)
{
    int events = 0;
    if (h->cfg.external_io)
        return pump_external(h);
    for (int i = 0; i < 64 && h->s && !h->unwatched; i++) {
        struct pollfd p = {h->s->fd,
                           (short)(((h->wants & SESS_READ) ? POLLIN : 0) |
                                   ((h->wants & SESS_WRITE) ? POLLOUT : 0)),
                           0};
        if (poll(&p, 1, 0) <= 0)
            break;
        events++;
        if (p.revents & POLLIN) {
            apply(h, session_on_readable(h->s));
        } else if (p.revents & POLLOUT) {
            apply(h, session_on_writable(h->s));
        } else {
            /* A hang-up: closed, or gone while its work is held. */
            disturb(h, 1);
            apply(h, session_on_error(h->s));
            CHECK(!h->s || h->unwatched);
        }
    }
    return events;
}

static size_t deliver(harness_t *h, size_t n)
{
    if (h->fd < 0 || h->fin)
        return 0;
    size_t left = h->req.len - h->sent;
    if (n > left)
        n = left;
    ssize_t w = n ? send(h->fd, h->req.data + h->sent, n, MSG_NOSIGNAL | MSG_DONTWAIT) : 0;
    if (w > 0)
        h->sent += (size_t)w;
    return w > 0 ? (size_t)w : 0;
}

static size_t drain(harness_t *h, size_t n)
{
    size_t got = 0;
    while (h->fd >= 0 && got < n) {
        char tmp[16384];
        size_t want = n - got < sizeof tmp ? n - got : sizeof tmp;
        ssize_t r = recv(h->fd, tmp, want, MSG_DONTWAIT);
        if (r <= 0)
            break;
        put(&h->out, tmp, (size_t)r);
        got += (size_t)r;
        if (h->out.len > OUT_CAP)
            reset(h); /* a client that has read enough (a STREAM from junk) */
    }
    return got;
}

/* Move the clock by ms and fire the session's deadline if it passed. */
static int tick(harness_t *h, int64_t ms)
{
    fake_clock_ms += ms;
    if (!h->s || h->unwatched)
        return 0;
    int64_t d = session_deadline(h->s);
    if (!d || fake_clock_ms < d)
        return 0;
    if (h->s->op != OP_WAIT) {
        /* A header timeout answers 408 (or ERR timeout) after what it had
         * taken; an idle one closes at once, dropping unsent answers. */
        int header = h->s->req_start && h->cfg.header_timeout_ms &&
                     fake_clock_ms >= h->s->req_start + h->cfg.header_timeout_ms;
        disturb(h, !header);
        h->timed_out |= header;
    }
    apply(h, session_on_timer(h->s));
    return 1;
}

static void finish_work(harness_t *h)
{
    session_work_run(h->s);
    h->work = 0;
    apply(h, session_on_work_done(h->s));
}

static void resume(harness_t *h)
{
    h->deferred = 0;
    apply(h, session_resume(h->s, 200, "application/octet-stream", h->defer_body.data,
                            h->defer_body.len));
}

static void half_close(harness_t *h)
{
    if (h->fd >= 0 && !h->fin)
        shutdown(h->fd, SHUT_WR);
    h->fin = 1;
    /* Requests not fully sent are not answered. */
    while (h->nexp > 0 && h->ans[h->nexp - 1].end > h->sent)
        h->nexp--;
}

/* ---- checking the answers ---- */

/* Does out[*off..) begin with answer k? Returns 1 (and moves *off past it),
 * 0 when the output ends first, -1 when another answer is there. */
static int match(const harness_t *h, size_t k, size_t *off)
{
    const answer_t *a = &h->ans[k];
    const char *p = h->out.data ? h->out.data + *off : "";
    size_t left = h->out.len - *off;
    if (!a->status) {
        size_t n = a->body.len < left ? a->body.len : left;
        if (memcmp(p, a->body.data, n) != 0)
            return -1;
        if (left < a->body.len)
            return 0;
        *off += a->body.len;
        return 1;
    }
    http_response_t res;
    int r = http_parse_response(p, left, 1 << 16, &res);
    if (r == HTTP_PARTIAL)
        return 0;
    CHECK(r > 0); /* whatever the answer, it is well-formed */
    const http_header_t *cl = http_find_header(res.headers, res.num_headers, "content-length");
    CHECK(cl != NULL);
    uint64_t len;
    CHECK(proto_parse_u64(cl->value, cl->value_len, UINT64_MAX, &len) == 0);
    if (res.status != a->status || res.major != 1 || res.minor != 1 ||
        (!a->any_body && len != a->body.len))
        return -1;
    /* The Connection header as the request asked, unless a shutdown was
     * closing the connection by then. */
    const http_header_t *c = http_find_header(res.headers, res.num_headers, "connection");
    if (!h->shut && (a->closes != (c && http_has_token(c->value, c->value_len, "close")) ||
                     a->keep_alive != (c && http_has_token(c->value, c->value_len, "keep-alive"))))
        return -1;
    size_t blen = a->head ? 0 : (size_t)len;
    if (left - (size_t)r < blen)
        return 0;
    if (!a->any_body && blen && memcmp(p + r, a->body.data, blen) != 0)
        return -1;
    *off += (size_t)r + blen;
    return 1;
}

/* Is out[off..) the one answer a header timeout gives? */
static int timeout_answer(const harness_t *h, size_t off)
{
    const char *p = h->out.data + off;
    size_t left = h->out.len - off;
    if (!h->http)
        return left == 12 && memcmp(p, "ERR timeout\n", 12) == 0;
    http_response_t res;
    int r = http_parse_response(p, left, 1 << 16, &res);
    return r > 0 && res.status == 408;
}

static void check(const harness_t *h)
{
    size_t off = 0, k = 0;
    int r = 1;
    while (k < h->nexp && (r = match(h, k, &off)) == 1)
        k++;
    size_t must = h->disturbed && h->must < h->nexp ? h->must : h->nexp;
    /* Every request the session took is answered, right, once, in order. */
    CHECK(k >= must);
    if (h->junk)
        return; /* what follows the junk is not predicted */
    if (r < 0 || off < h->out.len) {
        /* Not the next expected answer: only a timeout's, or a cut one. */
        CHECK(h->disturbed);
        CHECK((h->timed_out && timeout_answer(h, off)) || (h->abrupt && r >= 0));
    }
}

/* ---- the script ---- */

enum {
    OP_REQ,
    OP_REQ2,
    OP_REQ3,
    OP_JUNK,
    OP_DELIVER,
    OP_DELIVER2,
    OP_DRAIN,
    OP_TICK,
    OP_WORK,
    OP_RESUME,
    OP_FIN,
    OP_SHUTDOWN,
    OP_ERROR,
    OP_RESET,
    OP_N
};

static void configure(harness_t *h, script_t *in)
{
    unsigned a = take(in), b = take(in);
    session_cfg_default(&h->cfg);
    h->http = a & 1;
    h->cfg.offload_min = (a & 2) ? 1 + (b % 1000) : 0;
    h->cfg.write_each = (a & 4) != 0;
    h->cfg.json_errors = (a & 8) != 0;
    h->cfg.max_body = (a & 16) ? 4096 : HTTP_MAX_BODY;
    h->cfg.header_timeout_ms = (a & 32) ? 2000 : 0;
    h->cfg.idle_timeout_ms = (a & 64) ? 20000 : 0;
    h->cfg.burn_max = 5000; /* junk may ask for more: kept cheap */
    h->cfg.external_io = (b & 128) != 0;
    h->cfg.ext = ext;
    h->cfg.ext_ctx = h;

    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    if (a & 128) { /* partial writes and full sockets, early */
        int small = 4096;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    }
    h->fd = sv[1];
    h->s = calloc(1, sizeof *h->s);
    CHECK(h->s != NULL);
    session_init(h->s, sv[0], &h->cfg);
    h->wants = SESS_READ;
}

static void step(harness_t *h, script_t *in)
{
    static const char *const names[OP_N] = {"req",     "req",      "req",   "junk", "deliver",
                                            "deliver", "drain",    "tick",  "work", "resume",
                                            "fin",     "shutdown", "error", "reset"};
    unsigned op = take(in) % OP_N, n;
    size_t before = h->req.len;
    TRACE("op %s (sent %zu of %zu, out %zu, answers %zu)\n", names[op], h->sent, h->req.len,
          h->out.len, h->nans);
    switch (op) {
    case OP_REQ:
    case OP_REQ2:
    case OP_REQ3:
        if (h->http)
            frame_http(h, in);
        else
            frame_line(h, in);
        break;
    case OP_JUNK:
        frame_junk(h, in);
        break;
    case OP_DELIVER:
    case OP_DELIVER2:
        n = take(in);
        deliver(h, (n & 0x80) ? (n & 0x7f) * 512 + 1 : n + 1);
        /* External I/O: a receive that completed before the design could
         * stop it, handed over whether the session wants to read or not. */
        if (op == OP_DELIVER2 && h->cfg.external_io && h->s && !h->unwatched)
            receive(h);
        break;
    case OP_DRAIN:
        n = take(in);
        drain(h, (n & 0x80) ? (size_t)-1 : n * 64 + 1);
        break;
    case OP_TICK:
        n = take(in);
        tick(h, (n & 0x80) ? (int64_t)(n & 0x7f) * 500 : n);
        break;
    case OP_WORK:
        if (h->s && h->work)
            finish_work(h);
        break;
    case OP_RESUME:
        if (h->s && h->deferred)
            resume(h);
        break;
    case OP_FIN:
        half_close(h);
        break;
    case OP_SHUTDOWN: /* the server stops: what has arrived is answered */
        if (h->s) {
            disturb(h, 0);
            h->shut = 1;
            apply(h, session_shutdown(h->s));
        }
        break;
    case OP_RESET: /* the client goes away, answers unread (ECONNRESET, EPIPE) */
        reset(h);
        break;
    case OP_ERROR: /* EPOLLERR without EPOLLIN/EPOLLOUT */
        if (h->s && !h->unwatched) {
            disturb(h, 1);
            apply(h, session_on_error(h->s));
            CHECK(!h->s || h->unwatched);
        }
        break;
    }
    if (h->req.len > before)
        trace_bytes("  framed", h->req.data + before, h->req.len - before);
    pump(h);
    TRACE("  -> wants %d%s, sent %zu, out %zu\n", h->wants, h->s ? "" : " (closed)", h->sent,
          h->out.len);
}

/* Send the rest and a FIN, and run everything to its end. */
static void run_out(harness_t *h)
{
    int idle = 0;
    for (int round = 0; h->s; round++) {
        CHECK(round < MAX_ROUNDS);
        size_t moved = 0;
        if (!h->fin) {
            moved += deliver(h, (size_t)-1);
            if (h->sent == h->req.len)
                half_close(h);
        }
        moved += drain(h, (size_t)-1);
        int events = pump(h);
        if (!h->s)
            break;
        if (moved || events) {
            idle = 0;
            continue;
        }
        /* Nothing moved: what the session waits for is the harness's turn. */
        if (h->work) {
            finish_work(h);
        } else if (h->deferred) {
            resume(h);
        } else if (h->s->op == OP_WAIT && !h->unwatched) {
            tick(h, session_deadline(h->s) - fake_clock_ms);
        } else {
            /* Everything sent (with a FIN) and read, nothing to wait for:
             * the session must have ended by now, not be left to a timeout. */
            CHECK(++idle < 3);
        }
    }
    drain(h, (size_t)-1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    script_t in = {data, size};
    harness_t *h = calloc(1, sizeof *h);
    CHECK(h != NULL);
    configure(h, &in);
    h->must = (size_t)-1;
    for (int i = 0; i < MAX_OPS && in.n > 0; i++) {
        step(h, &in);
        if (!h->fin)
            h->nexp = h->nans;
    }
    if (!h->fin)
        h->nexp = h->nans;
    run_out(h);
    TRACE("expected %zu answers (%zu due), junk %d, disturbed %d%s%s\n", h->nexp, h->must, h->junk,
          h->disturbed, h->abrupt ? " abrupt" : "", h->timed_out ? " timed out" : "");
    trace_bytes("sent", h->req.data, h->sent);
    trace_bytes("answered", h->out.data, h->out.len);
    check(h);

    if (h->fd >= 0)
        close(h->fd);
    for (size_t i = 0; i < h->nans; i++)
        buf_free(&h->ans[i].body);
    buf_free(&h->req);
    buf_free(&h->out);
    buf_free(&h->defer_body);
    buf_free(&h->tx);
    free(h);
    return 0;
}
