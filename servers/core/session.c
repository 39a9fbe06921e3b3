#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chat.h"
#include "metrics.h"
#include "proto.h"

#define READ_CHUNK   16384       /* room asked for before each read */
#define OUT_HIGH     (256 << 10) /* stop answering while this much output waits */
#define STREAM_CHUNK (64 << 10)  /* STREAM bytes generated at a time */
/* Bytes a session sends per wake-up, so that one fast reader can't starve
 * the loop, and readers share the sending. On one host a write into a
 * reader's open window goes out at once, and autotuning grows the window
 * of a reader that gets much: with 1 MiB, 64 clients pipelining 1 MiB
 * answers (server-epoll on one CPU, loadgen on the other) ended with
 * receive buffers from 128 KiB to 32 MiB (half at 32 MiB), and a p99 of
 * 1.1-1.4 s for a p50 of 0.1 s. With 256 KiB: 1.4 to 7 MB, and a p99 of
 * 0.19-0.22 s for 0.18-0.21 s. The cost, in wake-ups: 5-7% fewer 1 MiB
 * answers a second (0.5 MiB gave p99s of 1.2-1.5 times the p50). A single
 * stream moved as many bytes a second with either. */
#define WRITE_BUDGET (256 << 10)
/* An idle session keeps buffers up to this size (a read behind a partial
 * request grows the input buffer to two READ_CHUNKs). */
#define BUF_KEEP     (2 * READ_CHUNK)

static const char hello_response[] = "HTTP/1.1 200 OK\r\n"
                                     "Content-Type: text/plain\r\n"
                                     "Content-Length: 13\r\n"
                                     "\r\n"
                                     "hello, world\n";

void session_cfg_default(session_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->header_timeout_ms = 10000;
    cfg->idle_timeout_ms = 60000;
    cfg->burn_max = PROTO_BURN_MAX;
    cfg->max_body = HTTP_MAX_BODY;
}

void session_init(session_t *s, int fd, const session_cfg_t *cfg)
{
    memset(s, 0, sizeof *s);
    s->fd = fd;
    s->cfg = cfg;
    s->last_active = time_now_ms();
}

/* Output not yet sent: queued, and taken by the design (external_io). */
static size_t out_pending(const session_t *s)
{
    return buf_used(&s->out) + s->lent;
}

static void out_put(session_t *s, const void *p, size_t n)
{
    /* Out of memory while answering: the connection can't be served
     * correctly any more, so drop it rather than send a torn reply. */
    if (buf_append(&s->out, p, n) < 0)
        s->closing = 2;
}

/* ---- answers ---- */

static void line_answer(session_t *s, int cmd, int ok, const char *text)
{
    out_put(s, text, strlen(text));
    metrics_request(cmd, ok ? MS_OK : MS_ERR);
}

/* Append p[0..n) at *at if it fits before end. */
static char *put(char *at, const char *end, const char *p, size_t n)
{
    if (!at || n > (size_t)(end - at))
        return NULL;
    memcpy(at, p, n);
    return at + n;
}

/* The head of an answer, assembled by hand: vsnprintf cost 2,500
 * instructions per answer, more than a sandboxed tenant's whole request. */
static int put_head(session_t *s, int status, const char *ctype, size_t len, const char *conn,
                    const char *extra)
{
    char head[512], num[24], *at = head, *end = head + sizeof head;
    const char *reason = http_reason(status);
    int n = 0;
    size_t v = len;
    do
        num[sizeof num - 1 - n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0 && n < 20);
    char code[3] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10)};
    at = put(at, end, "HTTP/1.1 ", 9);
    at = put(at, end, code, 3);
    at = put(at, end, " ", 1);
    at = put(at, end, reason, strlen(reason));
    at = put(at, end, "\r\nContent-Type: ", 16);
    at = put(at, end, ctype, strlen(ctype));
    at = put(at, end, "\r\nContent-Length: ", 18);
    at = put(at, end, num + sizeof num - n, (size_t)n);
    at = put(at, end, "\r\n", 2);
    at = put(at, end, conn, strlen(conn));
    at = put(at, end, extra, strlen(extra));
    at = put(at, end, "\r\n", 2);
    if (!at || status < 100 || status > 999) /* too long for head[]: the slow way */
        return buf_printf(&s->out,
                          "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                          status, reason, ctype, len, conn, extra);
    return buf_append(&s->out, head, (size_t)(at - head));
}

/* Queue status line, headers and body of an HTTP answer. `extra` is more
 * header lines (each ending in CRLF) or NULL. */
static void http_answer(session_t *s, int cmd, int status, const char *ctype, const void *body,
                        size_t len, const char *extra)
{
    const char *conn = "";
    if (s->closing || !s->keep_alive) {
        conn = "Connection: close\r\n";
        if (!s->closing)
            s->closing = 1;
    } else if (s->http10) {
        conn = "Connection: keep-alive\r\n";
    }
    if (put_head(s, status, ctype ? ctype : "text/plain", len, conn, extra ? extra : "") < 0)
        s->closing = 2;
    if (!s->head_only && body && len) /* NULL body: the caller sends it (STREAM) */
        out_put(s, body, len);
    metrics_request(cmd, metrics_status_slot(status));
}

static void http_text(session_t *s, int cmd, int status, const char *text)
{
    http_answer(s, cmd, status, NULL, text, strlen(text), NULL);
}

/* A request the connection can't recover from (framing lost, too large):
 * answer, discard everything else that came, and close. */
static void http_fail(session_t *s, int status, const char *text)
{
    s->closing = 1;
    s->keep_alive = 0;
    if (s->cfg->json_errors) {
        /* The texts are constant ASCII without quotes: safe inside a JSON string. */
        char body[160];
        int n =
            snprintf(body, sizeof body, "{\"error\":\"%.*s\"}\n", (int)strcspn(text, "\n"), text);
        http_answer(s, MC_OTHER, status, "application/json", body, (size_t)n, NULL);
    } else {
        http_text(s, MC_OTHER, status, text);
    }
    buf_consume(&s->in, buf_used(&s->in));
    metrics_error(ME_BAD_REQUEST);
}

static void answer_result(session_t *s, uint64_t x)
{
    char text[32];
    int n = snprintf(text, sizeof text, "RESULT %llu\n", (unsigned long long)x);
    if (s->proto == PROTO_LINE)
        line_answer(s, MC_BURN, 1, text);
    else
        http_answer(s, MC_BURN, 200, NULL, text, (size_t)n, NULL);
}

static void answer_done(session_t *s)
{
    if (s->proto == PROTO_LINE)
        line_answer(s, MC_WAIT, 1, "DONE\n");
    else
        http_text(s, MC_WAIT, 200, "DONE\n");
}

/* ---- the commands, shared by both protocols ---- */

static void start_wait(session_t *s, uint64_t ms)
{
    if (ms == 0) {
        answer_done(s);
        return;
    }
    s->op = OP_WAIT;
    s->arg = (uint64_t)time_now_ms() + ms;
}

static void start_burn(session_t *s, uint64_t n)
{
    if (s->cfg->offload_min && n >= s->cfg->offload_min) {
        /* Long enough to be worth a trip to a worker; the loop is told by
         * SESS_WORK (see finish()). Short ones cost less than the trip. */
        s->op = OP_BURN;
        s->arg = n;
        s->work_ready = 1;
        return;
    }
    answer_result(s, proto_burn(n));
}

static void start_stream(session_t *s, uint64_t n)
{
    if (s->proto == PROTO_HTTP) {
        http_answer(s, MC_STREAM, 200, NULL, NULL, n, NULL);
        if (s->head_only) /* HEAD: the length, but no bytes */
            return;
    } else {
        metrics_request(MC_STREAM, MS_OK);
    }
    s->op = OP_STREAM;
    s->arg = n;
    s->stream_done = s->proto == PROTO_LINE;
}

/* Generate STREAM bytes while the output is low. */
static void stream_fill(session_t *s)
{
    while (s->op == OP_STREAM && out_pending(s) < STREAM_CHUNK) {
        size_t n = s->arg < STREAM_CHUNK ? (size_t)s->arg : STREAM_CHUNK;
        if (n) {
            if (buf_reserve(&s->out, n, (size_t)-1) < 0) {
                s->closing = 2;
                return;
            }
            memset(s->out.data + s->out.len, 'A', n);
            s->out.len += n;
            s->arg -= n;
        }
        if (s->arg == 0) {
            s->op = OP_NONE;
            if (s->stream_done)
                out_put(s, "DONE\n", 5);
        }
    }
}

/* ---- line protocol ---- */

/* JOIN, SAY, LEAVE: the rooms are the design's (session_cfg_t.chat). */
static void chat_command(session_t *s, const proto_line_t *cmd)
{
    chat_t *c = s->cfg->chat;
    char text[48];
    int n;
    if (!c) {
        line_answer(s, MC_OTHER, 0, "ERR chat not supported by this server\n");
        return;
    }
    switch (cmd->cmd) {
    case CMD_JOIN:
        n = chat_join(c, s, cmd->text, cmd->text_len);
        if (n < 0) {
            line_answer(s, MC_OTHER, 0,
                        n == -ENAMETOOLONG ? "ERR room name too long\n" : "ERR out of memory\n");
            return;
        }
        snprintf(text, sizeof text, "JOINED %d\n", n);
        line_answer(s, MC_OTHER, 1, text);
        break;
    case CMD_SAY:
        if (chat_say(c, s, cmd->text, cmd->text_len) < 0)
            line_answer(s, MC_OTHER, 0, "ERR not in a room\n");
        else
            metrics_request(MC_OTHER, MS_OK); /* its answer is its own MSG */
        break;
    default:
        chat_leave(s);
        line_answer(s, MC_OTHER, 1, "LEFT\n");
    }
}

/* Answer one command. Returns 1 when a line was taken, 0 when incomplete. */
static int line_step(session_t *s)
{
    proto_line_t cmd;
    int n = proto_parse_line(buf_head(&s->in), buf_used(&s->in), s->cfg->burn_max, &cmd);
    if (n == 0)
        return 0;
    if (n < 0) {
        line_answer(s, MC_OTHER, 0, "ERR line too long\n");
        metrics_error(ME_LINE_TOO_LONG);
        buf_consume(&s->in, buf_used(&s->in));
        s->closing = 1;
        return 1;
    }
    buf_consume(&s->in, (size_t)n);
    switch (cmd.cmd) {
    case CMD_PING:
        line_answer(s, MC_PING, 1, "PONG\n");
        break;
    case CMD_WAIT:
        start_wait(s, cmd.arg);
        break;
    case CMD_BURN:
        start_burn(s, cmd.arg);
        break;
    case CMD_STREAM:
        start_stream(s, cmd.arg);
        break;
    case CMD_JOIN:
    case CMD_SAY:
    case CMD_LEAVE:
        chat_command(s, &cmd);
        break;
    default: {
        char text[64];
        snprintf(text, sizeof text, "ERR %s\n", cmd.err);
        line_answer(s, MC_OTHER, 0, text);
    }
    }
    return 1;
}

/* ---- HTTP ---- */

static int path_is(const http_request_t *r, const char *p)
{
    size_t n = strlen(p);
    return r->path_len == n && memcmp(r->path, p, n) == 0;
}

/* The value of query parameter `name` as a number <= max. Returns 0, or
 * -ENOENT (missing), -EINVAL or -ERANGE (bad). */
static int query_u64(const http_request_t *r, const char *name, uint64_t max, uint64_t *v)
{
    const char *val;
    size_t len;
    int rc = http_query_get(r->query, r->query_len, name, &val, &len);
    return rc < 0 ? rc : proto_parse_u64(val, len, max, v);
}

static void route(session_t *s, const http_request_t *r, const char *body, size_t blen)
{
    int cmd = path_is(r, "/")          ? MC_HELLO
              : path_is(r, "/ping")    ? MC_PING
              : path_is(r, "/wait")    ? MC_WAIT
              : path_is(r, "/burn")    ? MC_BURN
              : path_is(r, "/stream")  ? MC_STREAM
              : path_is(r, "/metrics") ? MC_METRICS
              : path_is(r, "/healthz") ? MC_HEALTHZ
                                       : -1;
    uint64_t v;
    if (cmd < 0) {
        if (s->cfg->ext && s->cfg->ext(s, r, body, blen, s->cfg->ext_ctx))
            return;
        http_text(s, MC_OTHER, 404, "not found\n");
        return;
    }
    int get = (r->method_len == 3 && memcmp(r->method, "GET", 3) == 0) || s->head_only;
    if (!get) {
        http_answer(s, cmd, 405, NULL, "method not allowed\n", 19, "Allow: GET, HEAD\r\n");
        return;
    }
    switch (cmd) {
    case MC_HELLO:
        if (s->keep_alive && !s->http10 && !s->head_only) { /* the hot path */
            out_put(s, hello_response, sizeof hello_response - 1);
            metrics_request(MC_HELLO, MS_200);
        } else {
            http_text(s, MC_HELLO, 200, "hello, world\n");
        }
        break;
    case MC_PING:
        http_text(s, MC_PING, 200, "PONG\n");
        break;
    case MC_WAIT:
        if (query_u64(r, "ms", PROTO_WAIT_MAX, &v) < 0)
            http_text(s, MC_WAIT, 400, "ms must be an integer from 0 to 60000\n");
        else
            start_wait(s, v);
        break;
    case MC_BURN:
        if (query_u64(r, "n", s->cfg->burn_max, &v) < 0)
            http_text(s, MC_BURN, 400, "n must be an integer within the BURN limit\n");
        else
            start_burn(s, v);
        break;
    case MC_STREAM:
        if (query_u64(r, "n", PROTO_STREAM_MAX, &v) < 0)
            http_text(s, MC_STREAM, 400, "n must be an integer from 0 to 4294967296\n");
        else
            start_stream(s, v);
        break;
    case MC_METRICS: {
        buf_t text = {0};
        if (metrics_render(&text) < 0)
            http_text(s, MC_METRICS, 500, "out of memory\n");
        else
            http_answer(s, MC_METRICS, 200, "text/plain; version=0.0.4", buf_head(&text),
                        buf_used(&text), NULL);
        buf_free(&text);
        break;
    }
    case MC_HEALTHZ:
        http_text(s, MC_HEALTHZ, 200, "ok\n");
        break;
    }
}

/* Answer one request. Returns 1 when one was taken, 0 when incomplete. */
static int http_step(session_t *s)
{
    http_request_t req;
    char *head = buf_head(&s->in);
    size_t n = buf_used(&s->in);
    int64_t clen;
    int chunked;
    const char *why;
    int r = http_parse_request(head, n, HTTP_MAX_HEAD, &req);
    if (r == HTTP_PARTIAL)
        return 0;
    int st = http_check_request(r, &req, &clen, &chunked, &why);
    if (st) {
        http_fail(s, st, why);
        return 1;
    }
    size_t total = (size_t)r, blen = 0;
    char *body = head + r;
    if (chunked) {
        int c = http_decode_chunked(&s->chunked, body, n - (size_t)r, s->cfg->max_body);
        if (c == 0)
            return 0;
        if (c < 0) {
            http_fail(s, c == HTTP_TOO_LARGE ? 413 : 400,
                      c == HTTP_TOO_LARGE ? "body too large\n" : "bad chunked body\n");
            return 1;
        }
        blen = s->chunked.dst;
        total += s->chunked.src;
    } else if (clen > 0) {
        if ((uint64_t)clen > s->cfg->max_body) {
            http_fail(s, 413, "body too large\n");
            return 1;
        }
        if (n - (size_t)r < (size_t)clen)
            return 0;
        blen = (size_t)clen;
        total += blen;
    }
    memset(&s->chunked, 0, sizeof s->chunked);
    s->keep_alive = (uint8_t)http_keep_alive(&req);
    s->http10 = req.minor == 0;
    s->head_only = req.method_len == 4 && memcmp(req.method, "HEAD", 4) == 0;
    route(s, &req, body, blen);
    /* After route: the body lives in the input buffer. */
    buf_consume(&s->in, total);
    return 1;
}

/* ---- the state machine ---- */

static int flush(session_t *s);

static void process(session_t *s)
{
    while (s->op == OP_NONE && !s->closing && out_pending(s) < OUT_HIGH && buf_used(&s->in) > 0) {
        if (s->proto == PROTO_UNKNOWN)
            s->proto = (uint8_t)proto_detect(buf_head(&s->in), buf_used(&s->in));
        int took = s->proto == PROTO_UNKNOWN ? 0
                   : s->proto == PROTO_LINE  ? line_step(s)
                                             : http_step(s);
        if (!took) {
            if (!s->req_start)
                s->req_start = time_now_ms();
            return;
        }
        s->req_start = 0;
        if (s->cfg->write_each && flush(s) < 0)
            s->closing = 2;
    }
}

/* Write what is queued, generating STREAM bytes as room appears (only
 * generating them with external_io: the design sends).
 * Returns 0, or -errno when the connection is dead. */
static int flush(session_t *s)
{
    size_t budget = WRITE_BUDGET;
    if (s->cfg->external_io) {
        stream_fill(s);
        return 0;
    }
    for (;;) {
        stream_fill(s);
        size_t n = buf_used(&s->out);
        if (n == 0 || budget == 0)
            return 0;
        size_t want = n < budget ? n : budget;
        ssize_t w = send(s->fd, buf_head(&s->out), want, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            int e = errno;
            metrics_error(ME_WRITE);
            return -e;
        }
        buf_consume(&s->out, (size_t)w);
        budget -= (size_t)w;
        s->last_active = time_now_ms();
        if ((size_t)w < want)
            return 0; /* the socket buffer is full */
    }
}

/* See session_held; static, so that the hot path inlines it. */
static int held(const session_t *s)
{
    return s->working || s->op == OP_DEFER;
}

int session_held(const session_t *s)
{
    return held(s);
}

/* The connection is dead (reset, a failed write or read, out of memory):
 * close it, or, while its work is held elsewhere, wait for that. */
static int dead(session_t *s)
{
    s->eof = 1;
    s->closing = 2;
    return session_wants(s);
}

int session_wants(const session_t *s)
{
    int pending_out = out_pending(s) > 0 || s->op == OP_STREAM;
    if (s->closing == 2)
        return held(s) ? SESS_GONE : SESS_CLOSE;
    if (s->op == OP_NONE && !pending_out && (s->closing || s->eof))
        return SESS_CLOSE;
    int w = pending_out ? SESS_WRITE : 0;
    if (s->op == OP_NONE && !s->closing && !s->eof && out_pending(s) < OUT_HIGH)
        w |= SESS_READ;
    return w;
}

/* Common tail of every event: answer more, write, and say what next. */
static int finish(session_t *s)
{
    int again;
    do {
        process(s);
        /* Answering stops behind a STREAM or a full output buffer. When
         * flush() ends the one or drains the other, requests pipelined
         * behind it are already in the input buffer and no event will come
         * for them: answer them now. */
        int blocked = s->op == OP_STREAM || out_pending(s) >= OUT_HIGH;
        if (flush(s) < 0)
            return dead(s);
        again = blocked && s->op == OP_NONE && !s->closing && buf_used(&s->in) > 0 &&
                out_pending(s) < OUT_HIGH;
    } while (again);
    /* Between requests a session holds no more than a new one would: the
     * buffers a burst grew (a large body, a pipelined batch, answers piled
     * up behind a WAIT or a slow reader) go back. Kept, they would make an
     * idle keep-alive connection cost its largest burst for the rest of its
     * life, and a long-lived server's memory creep up with its history. */
    if ((s->in.cap > BUF_KEEP || s->out.cap > BUF_KEEP) && s->op == OP_NONE && !s->working) {
        if (!buf_used(&s->in) && s->in.cap > BUF_KEEP)
            buf_free(&s->in);
        if (!buf_used(&s->out) && s->out.cap > BUF_KEEP)
            buf_free(&s->out);
    }
    int w = session_wants(s);
    if (s->work_ready && !(w & SESS_CLOSE)) {
        s->work_ready = 0;
        s->working = 1;
        w |= SESS_WORK;
    }
    return w;
}

/* The most input a session holds: one incomplete request at its limits,
 * and read room. */
static size_t in_max(const session_t *s)
{
    return HTTP_MAX_HEAD + s->cfg->max_body + READ_CHUNK;
}

/* The input is full, and what it holds is still not a whole request (a
 * chunked body's framing can outgrow the body limit): it never will be. */
static int in_full(session_t *s)
{
    if (s->proto == PROTO_HTTP)
        http_fail(s, 413, "request too large\n");
    else
        s->closing = 2;
    return finish(s);
}

int session_on_readable(session_t *s)
{
    if (s->eof || s->closing)
        return session_wants(s);
    size_t max = in_max(s), used = buf_used(&s->in);
    /* Near the limit, ask for what is left of it: a whole READ_CHUNK would
     * be refused, and the buffer would stop short of its limit (a request
     * within it answered 413). */
    int rc = buf_reserve(&s->in, max - used < READ_CHUNK ? max - used : READ_CHUNK, max);
    if (rc == -ENOMEM)
        return dead(s);
    if (buf_room(&s->in) == 0)
        return in_full(s); /* reading nothing while asking to read would spin */
    if (buf_room(&s->in) > 0) {
        ssize_t r = read(s->fd, s->in.data + s->in.len, buf_room(&s->in));
        if (r > 0) {
            s->in.len += (size_t)r;
            s->last_active = time_now_ms();
        } else if (r == 0) {
            s->eof = 1;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            metrics_error(ME_READ);
            return dead(s);
        }
    }
    return finish(s);
}

int session_on_writable(session_t *s)
{
    return finish(s);
}

int session_on_chat(session_t *s)
{
    chat_take(s);
    return finish(s);
}

int session_on_input(session_t *s, const void *p, ssize_t n)
{
    if (n < 0) {
        metrics_error(ME_READ);
        return dead(s);
    }
    if (n == 0) {
        s->eof = 1;
        return finish(s);
    }
    if (s->eof || s->closing)
        return session_wants(s); /* no more requests taken: as a read would not be made */
    if (buf_append(&s->in, p, (size_t)n) < 0)
        return dead(s);
    s->last_active = time_now_ms();
    int w = finish(s);
    /* What is left is one incomplete request (or input held back behind a
     * WAIT, a STREAM or unsent output, which is not looked at yet). */
    if ((w & SESS_READ) && buf_used(&s->in) >= in_max(s))
        return in_full(s);
    return w;
}

size_t session_take_output(session_t *s, buf_t *dst)
{
    if (!buf_used(&s->out))
        return 0;
    if (dst->cap > BUF_KEEP)
        buf_free(dst); /* as finish() does with the session's own buffers */
    buf_t empty = *dst;
    *dst = s->out;
    s->out = empty;
    s->out.off = s->out.len = 0;
    s->lent += buf_used(dst);
    return buf_used(dst);
}

int session_sent(session_t *s, buf_t *dst, ssize_t n)
{
    if (n < 0) {
        metrics_error(ME_WRITE);
        return dead(s);
    }
    size_t k = (size_t)n < buf_used(dst) ? (size_t)n : buf_used(dst);
    buf_consume(dst, k);
    s->lent -= k < s->lent ? k : s->lent;
    if (!buf_used(dst) && dst->cap > BUF_KEEP)
        buf_free(dst); /* as finish() does with the session's own buffers */
    s->last_active = time_now_ms();
    return finish(s);
}

int64_t session_deadline(const session_t *s)
{
    if (s->op == OP_WAIT)
        return (int64_t)s->arg;
    int64_t d = 0;
    if (s->req_start && s->cfg->header_timeout_ms)
        d = s->req_start + s->cfg->header_timeout_ms;
    if (s->cfg->idle_timeout_ms && !held(s)) {
        int64_t idle = s->last_active + s->cfg->idle_timeout_ms;
        if (!d || idle < d)
            d = idle;
    }
    return d;
}

int session_on_timer(session_t *s)
{
    int64_t now = time_now_ms();
    if (s->op == OP_WAIT) {
        if (now >= (int64_t)s->arg) {
            s->op = OP_NONE;
            answer_done(s);
        }
        return finish(s);
    }
    if (s->req_start && s->cfg->header_timeout_ms &&
        now >= s->req_start + s->cfg->header_timeout_ms) {
        /* Slowloris defence: a request that takes this long to arrive is
         * not a client we can afford to wait for. */
        metrics_error(ME_HEADER_TIMEOUT);
        s->req_start = 0;
        if (s->proto == PROTO_HTTP) {
            http_fail(s, 408, "request not complete in time\n");
        } else {
            buf_consume(&s->in, buf_used(&s->in));
            s->closing = 1;
            if (s->proto == PROTO_LINE)
                line_answer(s, MC_OTHER, 0, "ERR timeout\n");
        }
        return finish(s);
    }
    if (s->cfg->idle_timeout_ms && !held(s) && now >= s->last_active + s->cfg->idle_timeout_ms) {
        metrics_error(ME_IDLE_TIMEOUT);
        return SESS_CLOSE;
    }
    return finish(s);
}

int session_on_error(session_t *s)
{
    return dead(s);
}

void session_work_run(session_t *s)
{
    if (!__atomic_load_n(&s->cancelled, __ATOMIC_RELAXED))
        s->arg = proto_burn(s->arg);
}

void session_cancel_work(session_t *s)
{
    __atomic_store_n(&s->cancelled, 1, __ATOMIC_RELAXED);
}

int session_on_work_done(session_t *s)
{
    s->working = 0;
    s->op = OP_NONE;
    if (s->closing == 2)
        return SESS_CLOSE;
    answer_result(s, s->arg);
    return finish(s);
}

int session_on_work_refused(session_t *s)
{
    s->working = 0;
    s->op = OP_NONE;
    if (s->closing == 2)
        return SESS_CLOSE;
    if (s->proto == PROTO_LINE)
        line_answer(s, MC_BURN, 0, "ERR server busy\n");
    else
        http_text(s, MC_BURN, 503, "server busy\n");
    return finish(s);
}

void session_respond(session_t *s, int status, const char *content_type, const void *body,
                     size_t len)
{
    http_answer(s, MC_EXT, status, content_type, body, len, NULL);
}

int session_canned_init(session_canned_t *c, int status, const char *content_type, const void *body,
                        size_t len)
{
    const char *ctype = content_type ? content_type : "text/plain";
    int n = snprintf(c->bytes, sizeof c->bytes,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n", status,
                     http_reason(status), ctype, len);
    if (n < 0 || (size_t)n + len > sizeof c->bytes)
        return -E2BIG;
    if (len)
        memcpy(c->bytes + n, body, len);
    c->len = (size_t)n + len;
    c->status = status;
    c->content_type = ctype;
    c->body = body;
    c->body_len = len;
    return 0;
}

void session_respond_canned(session_t *s, const session_canned_t *c)
{
    /* The same test as http_answer's for a head without a Connection
     * field; whatever else, it builds the answer. */
    if (!s->closing && s->keep_alive && !s->http10 && !s->head_only) {
        out_put(s, c->bytes, c->len);
        metrics_request(MC_EXT, metrics_status_slot(c->status));
        return;
    }
    http_answer(s, MC_EXT, c->status, c->content_type, c->body, c->body_len, NULL);
}

void session_defer(session_t *s)
{
    s->op = OP_DEFER;
}

int session_resume(session_t *s, int status, const char *content_type, const void *body, size_t len)
{
    s->op = OP_NONE;
    if (s->closing == 2)
        return SESS_CLOSE;
    session_respond(s, status, content_type, body, len);
    return finish(s);
}

int session_shutdown(session_t *s)
{
    process(s); /* what has fully arrived is in flight: answer it */
    if (!s->closing)
        s->closing = 1;
    int w = finish(s);
    return w;
}

void session_close(session_t *s)
{
    chat_leave(s);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    buf_free(&s->in);
    buf_free(&s->out);
    metrics_conn(0);
}
