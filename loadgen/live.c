#include "live.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/http.h"
#include "core/net.h"

/* The dashboard page, loadgen/live.html, built into the binary (the
 * Makefile makes this object depend on it); scripts/live.py serves the same
 * file for bench and lab. */
__asm__(".pushsection .rodata\n"
        ".global live_page\n"
        "live_page:\n"
        ".incbin \"loadgen/live.html\"\n"
        ".global live_page_end\n"
        "live_page_end:\n"
        ".popsection\n");
extern const char live_page[], live_page_end[];

#define LIVE_IN_MAX (HTTP_MAX_HEAD + 1024) /* a browser's request head, at most */

char *live_sec_json(const live_sec_t *s, const char *target)
{
    json_t *j = json_pack(
        "{s:s, s:I, s:f, s:f, s:f, s:s, s:I, s:I, s:f, s:I, s:I, s:I}", "type", "sec", "sec",
        (json_int_t)s->sec, "elapsed_s", s->elapsed_s, "left_s", s->left_s, "span_s", s->span_s,
        "target", target, "requests", (json_int_t)s->requests, "errors", (json_int_t)s->errors,
        "rps", s->span_s > 0 ? (double)s->requests / s->span_s : 0.0, "p50_us", (json_int_t)s->p50,
        "p99_us", (json_int_t)s->p99, "p999_us", (json_int_t)s->p999);
    if (!j)
        return NULL;
    if (s->partial && json_object_set_new(j, "partial", json_true()) < 0) {
        json_decref(j);
        return NULL;
    }
    if (s->server) {
        json_t *srv =
            json_pack("{s:f, s:f, s:o, s:I, s:I, s:I, s:I}", "cpu_user_s", s->user_s,
                      "cpu_system_s", s->system_s, "cpu_per_req_us",
                      s->requests ? json_real((s->user_s + s->system_s) * 1e6 / (double)s->requests)
                                  : json_null(),
                      "rss_kb", (json_int_t)s->rss_kb, "vcsw", (json_int_t)s->vcsw, "nvcsw",
                      (json_int_t)s->nvcsw, "conns", (json_int_t)s->conns);
        if (!srv || json_object_set_new(j, "server", srv) < 0) {
            json_decref(j);
            return NULL;
        }
    }
    char *line = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(j);
    return line;
}

void live_init_off(live_t *lv)
{
    memset(lv, 0, sizeof *lv);
    lv->fd = -1;
    for (int i = 0; i < LIVE_MAX_CLIENTS; i++)
        lv->clients[i].fd = -1;
}

int live_open(live_t *lv, int port, char *err, size_t errlen)
{
    live_init_off(lv);
    int fd = net_listen("127.0.0.1", port, 16, NET_NONBLOCK, err, errlen);
    if (fd < 0)
        return fd;
    int p = net_local_port(fd);
    if (p < 0) {
        snprintf(err, errlen, "live: cannot read the port: %s", strerror(-p));
        close(fd);
        return p;
    }
    lv->fd = fd;
    lv->port = p;
    return 0;
}

int live_publish(live_t *lv, const char *json)
{
    if (lv->fd < 0)
        return 0;
    return buf_printf(&lv->hist, "data: %s\n\n", json);
}

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void client_close(live_client_t *c)
{
    close(c->fd);
    c->fd = -1;
    buf_free(&c->in);
    buf_free(&c->out);
    c->events = 0;
    c->sent = 0;
    c->done = 0;
    c->drained = 0;
}

/* Queue an answer with a body and Connection: close. */
static int answer(live_client_t *c, int status, const char *type, const char *body, size_t len)
{
    return buf_printf(&c->out,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                      status, http_reason(status), type, len) < 0 ||
                   buf_append(&c->out, body, len) < 0
               ? -ENOMEM
               : 0;
}

/* A complete request head is in c->in: decide the answer. Returns 0 or
 * -errno (the client is then closed). */
static int serve(live_client_t *c)
{
    http_request_t req;
    int n = http_parse_request(buf_head(&c->in), buf_used(&c->in), HTTP_MAX_HEAD, &req);
    if (n == HTTP_PARTIAL)
        return buf_used(&c->in) >= LIVE_IN_MAX ? -EMSGSIZE : 0;
    int64_t clen;
    int chunked;
    const char *why = NULL;
    int status = http_check_request(n, &req, &clen, &chunked, &why);
    buf_consume(&c->in, buf_used(&c->in)); /* one request per connection */
    if (status) {
        const char *msg = why ? why : http_reason(status);
        return answer(c, status, "text/plain", msg, strlen(msg));
    }
    int get = req.method_len == 3 && memcmp(req.method, "GET", 3) == 0;
    int page = req.path_len == 1 && req.path[0] == '/';
    int events = req.path_len == 7 && memcmp(req.path, "/events", 7) == 0;
    if ((page || events) && !get) {
        static const char msg[] = "GET only\n";
        return answer(c, 405, "text/plain", msg, sizeof msg - 1);
    }
    if (page)
        return answer(c, 200, "text/html; charset=utf-8", live_page,
                      (size_t)(live_page_end - live_page));
    if (events) {
        c->events = 1;
        c->sent = 0;
        /* A browser's EventSource retries after a lost stream; the run's end
         * says "end" first, so a closed stream is not a reason to retry. */
        return buf_printf(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                   "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                                   "retry: 2000\n\n");
    }
    static const char msg[] = "not found: the dashboard is / and its events /events\n";
    return answer(c, 404, "text/plain", msg, sizeof msg - 1);
}

/* Send what c has pending: its answer's head, then (a subscriber) the
 * events it has not had. Returns 1 when something is still pending, 0 when
 * all is sent, -errno when the client is gone. */
static int flush(live_t *lv, live_client_t *c)
{
    while (buf_used(&c->out)) {
        ssize_t n = send(c->fd, buf_head(&c->out), buf_used(&c->out), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 1 : -errno;
        buf_consume(&c->out, (size_t)n);
    }
    if (!c->events) {
        /* A page answered: Connection: close. Closing with input unread
         * (a body) would send a reset, which can lose the answer at the
         * client: shut the write side (the FIN follows the answer) and read
         * the rest for a while first (on_input, live_poll). */
        if (!c->done) {
            (void)shutdown(c->fd, SHUT_WR); /* failed: the peer is gone, close says so */
            c->done = 1;
            c->since_ms = now_ms();
        }
        return 0;
    }
    while (c->sent < lv->hist.len) {
        ssize_t n = send(c->fd, lv->hist.data + c->sent, lv->hist.len - c->sent,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 1 : -errno;
        c->sent += (size_t)n;
    }
    return 0;
}

/* Input on c: its request (before the answer), or the end of a subscriber's
 * connection. Returns 0 or -errno (close it). */
static int on_input(live_client_t *c)
{
    if (!c->events && (c->done || buf_used(&c->out))) {
        /* Answered (or being answered): drop what it still sends (a body),
         * a bounded amount, up to its end. */
        char junk[16384];
        ssize_t n = recv(c->fd, junk, sizeof junk, MSG_DONTWAIT);
        if (n > 0)
            c->drained += (size_t)n;
        return n == 0 || c->drained > LIVE_DRAIN_MAX        ? -ECONNRESET
               : n < 0 && errno != EAGAIN && errno != EINTR ? -errno
                                                            : 0;
    }
    if (c->events) {
        /* A subscriber has nothing more to say: more bytes are a client to
         * close, not to read forever. */
        char junk[1];
        ssize_t n = recv(c->fd, junk, sizeof junk, MSG_DONTWAIT);
        return n >= 0 ? -ECONNRESET : errno != EAGAIN && errno != EINTR ? -errno : 0;
    }
    if (buf_reserve(&c->in, 1024, LIVE_IN_MAX) < 0)
        return -EMSGSIZE;
    ssize_t n = recv(c->fd, c->in.data + c->in.len, buf_room(&c->in), MSG_DONTWAIT);
    if (n == 0)
        return -ECONNRESET;
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -errno;
    c->in.len += (size_t)n;
    return serve(c);
}

/* A free slot, or the oldest client that is not a subscriber (closed for
 * the new one: a connection that says nothing must not lock the page out);
 * NULL when every slot holds a subscriber. */
static live_client_t *free_slot(live_t *lv)
{
    live_client_t *old = NULL;
    for (int i = 0; i < LIVE_MAX_CLIENTS; i++) {
        live_client_t *c = &lv->clients[i];
        if (c->fd < 0)
            return c;
        if (!c->events && (!old || c->since_ms < old->since_ms))
            old = c;
    }
    if (old)
        client_close(old);
    return old;
}

static void accept_all(live_t *lv)
{
    for (;;) {
        int fd = accept4(lv->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* EAGAIN: all taken; a connection gone before its accept: next.
             * Anything else (out of descriptors) would come back at once:
             * the listener rests a second rather than spin. */
            if (errno == ECONNABORTED || errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                lv->accept_after_ms = now_ms() + 1000;
            return;
        }
        live_client_t *c = free_slot(lv);
        if (!c) {
            close(fd); /* full of subscribers: a dashboard is for a few watchers */
            continue;
        }
        c->fd = fd;
        c->since_ms = now_ms();
    }
}

void live_poll(live_t *lv, int timeout_ms)
{
    if (lv->fd < 0) {
        if (timeout_ms > 0)
            usleep((useconds_t)timeout_ms * 1000);
        return;
    }
    struct pollfd pf[LIVE_MAX_CLIENTS + 1];
    live_client_t *who[LIVE_MAX_CLIENTS + 1];
    nfds_t n = 0;
    int64_t now = now_ms();
    /* A negative descriptor is ignored by poll: the listener resting. */
    pf[n] = (struct pollfd){.fd = now >= lv->accept_after_ms ? lv->fd : -1, .events = POLLIN};
    who[n++] = NULL;
    for (int i = 0; i < LIVE_MAX_CLIENTS; i++) {
        live_client_t *c = &lv->clients[i];
        if (c->fd < 0)
            continue;
        /* No whole head in time, or an answered client's drain over. */
        if ((c->done && now - c->since_ms >= LIVE_DRAIN_MS) ||
            (!c->done && !c->events && !buf_used(&c->out) && now - c->since_ms >= LIVE_HEAD_MS)) {
            client_close(c);
            continue;
        }
        /* Send what is queued now rather than after a wake-up for it. */
        int pending = !c->done && (buf_used(&c->out) || c->events) ? flush(lv, c) : 0;
        if (pending < 0) {
            client_close(c);
            continue;
        }
        pf[n] = (struct pollfd){.fd = c->fd, .events = POLLIN | (pending ? POLLOUT : 0)};
        who[n++] = c;
    }
    if (poll(pf, n, timeout_ms) <= 0)
        return; /* the time is up, or a signal (the caller's loop looks at it) */
    if (pf[0].revents & POLLIN)
        accept_all(lv);
    for (nfds_t i = 1; i < n; i++) {
        live_client_t *c = who[i];
        int rc = 0;
        if (pf[i].revents & (POLLIN | POLLHUP | POLLERR))
            rc = on_input(c);
        if (rc == 0 && !c->done && (buf_used(&c->out) || c->events))
            rc = flush(lv, c) < 0 ? -ECONNRESET : 0;
        if (rc < 0)
            client_close(c);
    }
}

void live_close(live_t *lv, const char *end_json, int linger_ms)
{
    if (lv->fd < 0)
        return;
    if (buf_printf(&lv->hist, "event: end\ndata: %s\n\n", end_json) < 0)
        linger_ms = 0; /* out of memory: the streams just close */
    close(lv->fd);
    lv->fd = -1;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int busy = 0;
        for (int i = 0; i < LIVE_MAX_CLIENTS; i++) {
            live_client_t *c = &lv->clients[i];
            if (c->fd < 0)
                continue;
            /* 1: still sending; 0: all sent; < 0: gone, or not a subscriber
             * yet (a request half read is not worth waiting for). */
            int rc = (buf_used(&c->out) || c->events) ? flush(lv, c) : -ECONNRESET;
            if (rc == 1)
                busy = 1;
            else
                client_close(c);
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        int64_t ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (!busy || ms >= linger_ms)
            break;
        usleep(10000);
    }
    for (int i = 0; i < LIVE_MAX_CLIENTS; i++)
        if (lv->clients[i].fd >= 0)
            client_close(&lv->clients[i]);
    buf_free(&lv->hist);
}
