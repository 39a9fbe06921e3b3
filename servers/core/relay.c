/* relay: the proxy design's machinery (servers/proxy.c shows its model):
 * client connections, a keep-alive pool of upstream connections per loop
 * and upstream, and pump, which relays the bytes of requests and answers
 * both ways with backpressure, rewriting heads on the way (relay.h).
 *
 * Sockets are registered once, edge-triggered for both directions: a
 * request costs four system calls (read, write, read, write) besides the
 * shared epoll_wait.
 *
 * A long body of known length (SPLICE_MIN and more) is read straight into
 * the client's buffer, its head having been read alone: one copy in, one
 * out. With --splice it does not pass through the proxy's memory at all:
 * splice(2) moves it from the upstream's socket into a pipe of the
 * client's and from there into the client's socket, the kernel handing
 * over its pages. That is not the default: it takes the proxy's CPU per
 * long answer to 0.65-0.75 of the copy's, but only where splicing pays at
 * all (an upstream of large segments: on the same machine), and there the
 * pages it hands over cost the upstream and the client more than it saves
 * (see splice_pays). */
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics.h"
#include "net.h"
#include "proto.h"

#define BUF_CAP     (64 << 10)  /* ceiling of each buffer: the backpressure */
#define READ_MIN    4096        /* the first read's room; it doubles while reads fill it */
#define SHRINK_MS   1000        /* a client idle this long gives its buffers back */
#define PIPE_MAX    64          /* requests in flight per client connection */
#define SPLICE_MSS  (16 << 10)  /* an upstream's segments smaller than this: no splice */
#define SPLICE_MIN  (16 << 10)  /* a body left this long goes by the pipe (cheaper than 2 copies) */
#define NEAR_RTT_US 1000        /* an upstream nearer than this (handshake's round trip) ... */
#define NEAR_RCVBUF (256 << 10) /* ... gets this receive buffer, not the kernel's autotuning */
#define VIA         "server-proxy"

enum { K_CLIENT, K_PEER, K_DEAD };

/* What the client and the upstream side share: the socket and its state. */
typedef struct end {
    uint8_t kind;      /* K_CLIENT, K_PEER, K_DEAD once closed */
    uint8_t can_read;  /* edge-triggered: may have bytes (or EOF) to read */
    uint8_t can_write; /* edge-triggered: the socket may take more */
    uint8_t eof;       /* the other end sent FIN (or reset: then err) */
    uint8_t grow;      /* the last read filled its room: offer more */
    uint8_t hup;       /* epoll saw the other end's FIN (or an error) */
    int err;           /* the socket's error, errno */
    int fd;
    buf_t in, out;
    timer_node_t timer;
    struct end *dead_next; /* freed after the batch of events (see reap) */
} end_t;

typedef struct upstream {
    char name[80]; /* HOST:PORT as given: the metrics' label */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} upstream_t;

/* Per loop and upstream: the idle connections and the counters (written
 * by the loop's thread only, read by /metrics on any). */
typedef struct pool {
    struct peer *idle; /* a stack: the warmest first */
    uint64_t n_idle, n_active;
    uint64_t opened, reused, failed, retries, timeouts, truncated;
    uint64_t spliced;   /* answer bytes moved by splice, not copied */
    uint64_t code[600]; /* answers by status code */
} pool_t;

/* A connection to an upstream. */
typedef struct peer {
    end_t e;
    uint8_t connecting; /* the connect is in progress */
    uint8_t reused;     /* taken from the pool (it may be stale) */
    uint8_t done;       /* must not go back to the pool */
    uint8_t wclosed;    /* a write failed: the upstream reads no more (its answer may
                           still be there to read: the read side decides) */
    uint8_t splice;     /* SPL_*: does splicing pay on it (splice_pays) */
    uint8_t near;       /* its handshake took under NEAR_RTT_US (near_rcvbuf) */
    upstream_t *up;
    pool_t *pool;
    struct conn *client; /* the borrower, NULL while idle */
    struct peer *next;   /* in the pool */
} peer_t;

/* A request sent on, whose answer is awaited. */
typedef struct flight {
    uint8_t head;   /* HEAD: the answer has no body */
    uint8_t close;  /* the client asked to close after it */
    uint8_t http10; /* the client speaks HTTP/1.0 */
} flight_t;

enum { F_HEAD, F_LENGTH, F_CHUNKED };          /* the request being sent on */
enum { R_HEAD, R_LENGTH, R_CHUNKED, R_CLOSE }; /* the answer being relayed */

/* A client connection. */
typedef struct conn {
    end_t e;
    uint8_t line;     /* speaks the line protocol: every line gets ERR */
    uint8_t http;     /* speaks HTTP (told by its first line) */
    uint8_t closing;  /* close once out is written */
    uint8_t answered; /* a byte of the current answer came */
    uint8_t replay;   /* what was sent on the peer may be sent again (see retry) */
    uint8_t retried;  /* once per borrowing */
    int reject;       /* status to answer once the flights are in (4xx, 5xx) */
    const char *why;  /* and its reason */
    peer_t *peer;
    int fwd;           /* F_*: the request being forwarded */
    uint64_t fwd_left; /* F_LENGTH: body bytes still to go on */
    http_chunked_t fwd_ch;
    int rsp; /* R_*: the answer being relayed */
    uint64_t rsp_left;
    http_chunked_t rsp_ch;
    uint8_t rsp_keep;  /* the upstream keeps its connection after this answer */
    uint8_t big;       /* the last answer's body was long: read heads alone */
    int pipe[2];       /* splice's pipe, made when first needed: -1 none */
    uint32_t piped;    /* bytes in it: they go to the client before e.out's */
    uint32_t pipe_cap; /* its capacity (smaller once the user has many pipes) */
    flight_t q[PIPE_MAX];
    unsigned qhead, qlen;
    size_t sent;                    /* while replay: bytes of peer->out written, kept */
    int64_t req_start;              /* ms: a request head began arriving */
    int64_t last;                   /* ms: the last byte moved for this client */
    int64_t up_mark;                /* ms: since when the upstream owes us bytes */
    char xff[INET6_ADDRSTRLEN + 2]; /* ", ADDR": the client's, for X-Forwarded-For */
    size_t xff_len;
    struct relay_loop *L;
    struct conn *prev, *next; /* the loop's clients, for the stop */
} conn_t;

typedef struct relay_loop loop_t;

static server_cfg_t cfg;
static upstream_t ups[SERVER_MAX_UPSTREAMS];
static size_t n_ups;
static loop_t *loops;
static int n_loops;
/* Splice's pipes, two descriptors each, take only what the clients' worst
 * case leaves (relay_init): a client within --max-conns is never refused
 * for want of a descriptor a pipe took. Past the budget, bodies are copied. */
static uint64_t pipe_budget = UINT64_MAX, pipes_open;

/* One writer per counter: a plain store, atomic for the readers. */
#define STAT_ADD(x, n) __atomic_store_n(&(x), (x) + (n), __ATOMIC_RELAXED)
#define STAT_GET(x)    __atomic_load_n(&(x), __ATOMIC_RELAXED)

static void pump(conn_t *c);

/* ---- the ends: reading, writing, closing ---- */

/* Read from e into b what fits under cap bytes in b, at most max. Returns
 * bytes read, 0 for none now (no room, nothing there), or -1 at EOF or an
 * error (e->eof, e->err). */
static ssize_t end_recv(end_t *e, buf_t *b, size_t cap, size_t max)
{
    size_t used = buf_used(b);
    if (!e->can_read || e->eof || used >= cap || max == 0)
        return 0;
    size_t want = e->grow ? 2 * b->cap : READ_MIN;
    if (want > cap - used)
        want = cap - used;
    if (buf_reserve(b, want, cap) < 0)
        return 0; /* out of memory: the other side drains, then we read */
    size_t room = buf_room(b);
    if (room > cap - used)
        room = cap - used;
    if (room > max)
        room = max;
    ssize_t n = recv(e->fd, b->data + b->len, room, 0);
    if (n > 0) {
        b->len += (size_t)n;
        /* A short read emptied the socket: the next byte brings an edge.
         * Not so the FIN when it came with the last bytes: it was in the
         * edge just seen, so it is read now. */
        if ((size_t)n < room && !e->hup)
            e->can_read = 0;
        e->grow = (size_t)n == room;
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        e->can_read = errno == EINTR;
        return 0;
    }
    e->eof = 1;
    e->err = n < 0 ? errno : 0;
    return -1;
}

/* Read into e->in what fits under cap. As end_recv. */
static ssize_t end_read(end_t *e, size_t cap)
{
    return end_recv(e, &e->in, cap, SIZE_MAX);
}

/* Write from p, n bytes. Returns bytes written, 0 for none now, -1 when the
 * peer is gone (e->err). */
static ssize_t end_write(end_t *e, const char *p, size_t n)
{
    if (!e->can_write || n == 0)
        return 0;
    ssize_t w = send(e->fd, p, n, MSG_NOSIGNAL);
    if (w >= 0) {
        if ((size_t)w < n)
            e->can_write = 0;
        return w;
    }
    if (errno == EAGAIN || errno == EINTR) {
        e->can_write = errno == EINTR;
        return 0;
    }
    e->err = errno;
    return -1;
}

/* Register a new socket, for both directions, once. */
static int end_watch(loop_t *L, end_t *e)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = e};
    if (epoll_ctl(L->ep, EPOLL_CTL_ADD, e->fd, &ev) < 0)
        return -errno;
    /* Cannot fail after: a place per end was reserved (timers_reserve). */
    return 0;
}

/* Close e now; its memory goes after the batch of events, which may still
 * name it (reap). */
static void end_close(loop_t *L, end_t *e)
{
    if (e->kind == K_DEAD)
        return;
    (void)timers_set(&L->timers, &e->timer, 0); /* cancelling cannot fail */
    close(e->fd);                               /* also leaves epoll */
    e->kind = K_DEAD;
    buf_free(&e->in);
    buf_free(&e->out);
    e->dead_next = L->dead;
    L->dead = e;
}

static void reap(loop_t *L)
{
    while (L->dead) {
        end_t *e = L->dead;
        L->dead = e->dead_next;
        free(e);
    }
}

/* ---- the pool ---- */

static void peer_close(loop_t *L, peer_t *p)
{
    if (p->client) {
        p->client->peer = NULL;
        p->client = NULL;
        STAT_ADD(p->pool->n_active, -1);
    }
    end_close(L, &p->e);
}

/* A connection to upstream u for c: an idle one from the pool unless
 * `fresh`, else a new one (its connect in progress). NULL when none can be
 * made (counted). */
static peer_t *pool_get(loop_t *L, conn_t *c, size_t u, int fresh)
{
    pool_t *pool = &L->pools[u];
    peer_t *p = fresh ? NULL : pool->idle;
    if (p) {
        pool->idle = p->next;
        STAT_ADD(pool->n_idle, -1);
        STAT_ADD(pool->reused, 1);
        p->reused = 1;
        (void)timers_set(&L->timers, &p->e.timer, 0);
    } else {
        int fd =
            net_connect((struct sockaddr *)&ups[u].addr, ups[u].addrlen, NULL, 0, NET_NONBLOCK);
        p = fd >= 0 ? calloc(1, sizeof *p) : NULL;
        if (!p || timers_reserve(&L->timers, L->timers.n + 1) < 0) {
            if (fd >= 0)
                close(fd);
            free(p);
            STAT_ADD(pool->failed, 1);
            return NULL;
        }
        p->e.kind = K_PEER;
        p->e.fd = fd;
        p->connecting = 1;
        p->up = &ups[u];
        p->pool = pool;
        if (end_watch(L, &p->e) < 0) {
            close(fd);
            free(p);
            STAT_ADD(pool->failed, 1);
            return NULL;
        }
        STAT_ADD(pool->opened, 1);
    }
    p->client = c;
    STAT_ADD(pool->n_active, 1);
    return p;
}

/* Give c's connection back: to the pool when it is clean (every answer
 * read whole, nothing more from the upstream), else close it. */
static void pool_put(loop_t *L, conn_t *c)
{
    peer_t *p = c->peer;
    pool_t *pool = p->pool;
    c->peer = NULL;
    p->client = NULL;
    STAT_ADD(pool->n_active, -1);
    if (p->done || p->e.eof || p->connecting || buf_used(&p->e.in) || buf_used(&p->e.out) ||
        (int64_t)pool->n_idle >= cfg.upstream_keepalive || L->stopping) {
        end_close(L, &p->e);
        return;
    }
    p->next = pool->idle;
    pool->idle = p;
    STAT_ADD(pool->n_idle, 1);
    (void)timers_set(&L->timers, &p->e.timer, time_now_ms() + cfg.upstream_idle_ms);
}

/* An idle pooled connection had an event or its idle time is over: the
 * upstream closed it, or sent what nobody asked for. Either way it goes. */
static void pool_drop(loop_t *L, peer_t *p, int expired)
{
    if (!expired) {
        (void)end_read(&p->e, BUF_CAP); /* what it says is in eof and in */
        if (!p->e.eof && buf_used(&p->e.in) == 0)
            return; /* a spurious wake-up */
    }
    pool_t *pool = p->pool;
    for (peer_t **pp = &pool->idle; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            STAT_ADD(pool->n_idle, -1);
            break;
        }
    end_close(L, &p->e);
}

/* ---- answers the proxy writes itself ---- */

static void respond(conn_t *c, int status, const char *body, int close)
{
    const flight_t *f = c->qlen ? &c->q[c->qhead] : NULL;
    size_t len = strlen(body);
    /* Cannot fail but for memory: then the client sees the close. */
    (void)buf_printf(&c->e.out,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n",
                     status, http_reason(status), len, close ? "Connection: close\r\n" : "");
    if (!(f && f->head))
        (void)buf_append(&c->e.out, body, len);
    metrics_request(MC_OTHER, metrics_status_slot(status));
    if (close)
        c->closing = 1;
}

/* The request at the front could not be answered by the upstream: answer
 * it (502, 504) ourselves. The connection stays only when nothing else was
 * in flight or being sent on. */
static void fail_front(conn_t *c, int status, const char *why)
{
    int alone = c->qlen == 1 && c->fwd == F_HEAD;
    int close = !alone || c->q[c->qhead].close;
    respond(c, status, why, close);
    c->qhead = (c->qhead + 1) % PIPE_MAX;
    c->qlen--;
    if (close) {
        c->qlen = 0;
        c->reject = 0;
    }
    c->rsp = R_HEAD;
}

/* ---- requests: client -> upstream ---- */

/* Is this field for the hop between two HTTP nodes only (RFC 9110 7.6.1):
 * Connection and the fields it names, Keep-Alive, Proxy-Connection, TE,
 * Upgrade? Transfer-Encoding is relayed: bodies pass with their framing. */
static int hop_by_hop(const http_header_t *h, const http_header_t *all, size_t n)
{
    if (http_name_is(h->name, h->name_len, "Connection") ||
        http_name_is(h->name, h->name_len, "Keep-Alive") ||
        http_name_is(h->name, h->name_len, "Proxy-Connection") ||
        http_name_is(h->name, h->name_len, "TE") || http_name_is(h->name, h->name_len, "Upgrade"))
        return 1;
    for (size_t i = 0; i < n; i++) {
        if (!http_name_is(all[i].name, all[i].name_len, "Connection"))
            continue;
        char token[64];
        if (h->name_len >= sizeof token)
            continue;
        memcpy(token, h->name, h->name_len);
        token[h->name_len] = '\0';
        if (http_has_token(all[i].value, all[i].value_len, token))
            return 1;
    }
    return 0;
}

/* Writing a head: at a cursor in a buffer reserved for the whole of it
 * (head_begin), so that no piece pays a check or a call of its own. */
static char *put(char *w, const void *p, size_t n)
{
    memcpy(w, p, n);
    return w + n;
}
#define PUT(w, lit) put((w), (lit), sizeof(lit) - 1)

/* The cursor for a head rewritten from one of len bytes with n fields: a
 * field may grow by two bytes (": " for ":", "\r\n" for "\n"), and what is
 * added takes under 256. NULL when out of memory. */
static char *head_begin(buf_t *b, size_t len, size_t n)
{
    return buf_reserve(b, len + 2 * n + 256, SIZE_MAX) < 0 ? NULL : b->data + b->len;
}

static void head_end(buf_t *b, const char *w)
{
    b->len = (size_t)(w - b->data);
}

enum { SKIP_FRAMING = 1, SKIP_HOST = 2 }; /* put_fields' `skip` */

/* Is h a field put_fields is to leave out: Content-Length and
 * Transfer-Encoding with SKIP_FRAMING, Host with SKIP_HOST? */
static int skipped(const http_header_t *h, unsigned skip)
{
    return ((skip & SKIP_FRAMING) && (http_name_is(h->name, h->name_len, "Content-Length") ||
                                      http_name_is(h->name, h->name_len, "Transfer-Encoding"))) ||
           ((skip & SKIP_HOST) && http_name_is(h->name, h->name_len, "Host"));
}

/* Write the end-to-end fields of a head at w: the hop-by-hop ones left out,
 * and those `skip` names (the framing of answers that have no body whatever
 * they say, see put_answer; the Host of a request whose target names
 * another, see put_request); `via` (", 1.1 server-proxy") added to the last
 * Via field or, when there is none, as a Via field of its own; likewise
 * `xff` (", ADDR") to X-Forwarded-For when it is not NULL (requests).
 * Returns the cursor. */
static char *put_fields(char *w, const http_header_t *h, size_t n, unsigned skip, const char *via,
                        size_t via_len, const char *xff, size_t xff_len)
{
    size_t last_via = n, last_xff = n;
    for (size_t i = 0; i < n; i++) {
        if (http_name_is(h[i].name, h[i].name_len, "Via"))
            last_via = i;
        else if (xff && http_name_is(h[i].name, h[i].name_len, "X-Forwarded-For"))
            last_xff = i;
    }
    for (size_t i = 0; i < n; i++) {
        if (hop_by_hop(&h[i], h, n) || skipped(&h[i], skip))
            continue;
        w = put(w, h[i].name, h[i].name_len);
        w = PUT(w, ": ");
        w = put(w, h[i].value, h[i].value_len);
        if (i == last_via)
            w = put(w, via, via_len);
        if (i == last_xff)
            w = put(w, xff, xff_len);
        w = PUT(w, "\r\n");
    }
    if (last_via == n) {
        w = PUT(w, "Via: ");
        w = put(w, via + 2, via_len - 2);
        w = PUT(w, "\r\n");
    }
    if (xff && last_xff == n) {
        w = PUT(w, "X-Forwarded-For: ");
        w = put(w, xff + 2, xff_len - 2);
        w = PUT(w, "\r\n");
    }
    return w;
}

static const char via10[] = ", 1.0 " VIA, via11[] = ", 1.1 " VIA;

/* The request's head (len bytes), rewritten for the upstream, into b.
 * Returns 0 or -ENOMEM. */
static int put_request(conn_t *c, buf_t *b, const http_request_t *r, size_t len)
{
    char *w = head_begin(b, len, r->num_headers);
    if (!w)
        return -ENOMEM;
    w = put(w, r->method, r->method_len);
    w = PUT(w, " ");
    w = put(w, r->path, r->path_len);
    if (r->query) {
        w = PUT(w, "?");
        w = put(w, r->query, r->query_len);
    }
    /* An HTTP/1.0 client's request goes as 1.0: the answer then comes
     * without chunked coding, which that client could not read. */
    int v10 = r->minor == 0;
    w = v10 ? PUT(w, " HTTP/1.0\r\n") : PUT(w, " HTTP/1.1\r\n");
    /* An absolute-form target goes as origin-form (the parser kept its
     * path), and its authority as the Host, whatever Host came with it: a
     * proxy must (RFC 9112 3.2.2), and the upstream then sees the host the
     * client named, as an origin server would have. */
    if (r->authority) {
        w = PUT(w, "Host: ");
        w = put(w, r->authority, r->authority_len);
        w = PUT(w, "\r\n");
    }
    w = put_fields(w, r->headers, r->num_headers, r->authority ? SKIP_HOST : 0, v10 ? via10 : via11,
                   sizeof via11 - 1, c->xff, c->xff_len);
    if (cfg.upstream_keepalive == 0)
        w = PUT(w, "Connection: close\r\n\r\n");
    else if (v10)
        w = PUT(w, "Connection: keep-alive\r\n\r\n");
    else
        w = PUT(w, "\r\n");
    head_end(b, w);
    return 0;
}

/* Idempotent methods (RFC 9110 9.2.2) may be sent again after a failure
 * that could have come before the upstream saw them. */
static int idempotent(const http_request_t *r)
{
    static const char *const m[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++)
        if (strlen(m[i]) == r->method_len && memcmp(r->method, m[i], r->method_len) == 0)
            return 1;
    return 0;
}

static void reject(conn_t *c, int status, const char *why)
{
    metrics_error(ME_BAD_REQUEST);
    c->reject = status;
    c->why = why;
}

/* The proxy's own page: GET /metrics (the pool's figures and the core's). */
static int local(conn_t *c, const http_request_t *r, int close)
{
    if (!(r->path_len == 8 && memcmp(r->path, "/metrics", 8) == 0 && r->method_len == 3 &&
          memcmp(r->method, "GET", 3) == 0))
        return 0;
    buf_t text = {0};
    if (metrics_render(&text) < 0) {
        respond(c, 500, "out of memory\n", close);
    } else {
        (void)buf_printf(&c->e.out,
                         "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         "Content-Length: %zu\r\n%s\r\n",
                         buf_used(&text), close ? "Connection: close\r\n" : "");
        (void)buf_append(&c->e.out, buf_head(&text), buf_used(&text));
        metrics_request(MC_METRICS, MS_200);
        c->closing = (uint8_t)close;
    }
    buf_free(&text);
    return 1;
}

/* A line-protocol client: ERR for each line (this design serves HTTP). */
static int line_step(conn_t *c)
{
    char *nl = memchr(buf_head(&c->e.in), '\n', buf_used(&c->e.in));
    if (!nl) {
        if (buf_used(&c->e.in) > PROTO_MAX_LINE) {
            (void)buf_append(&c->e.out, "ERR line too long\n", 18);
            c->closing = 1;
        }
        return 0;
    }
    buf_consume(&c->e.in, (size_t)(nl - buf_head(&c->e.in)) + 1);
    (void)buf_append(&c->e.out, "ERR this server is an HTTP proxy\n", 33);
    metrics_request(MC_OTHER, MS_ERR);
    return 1;
}

/* Take the next request head from the client, check it as the core does
 * (anything rejected is answered by us, never forwarded), and queue it,
 * rewritten, for the upstream. Returns 1 when it took one. */
static int forward_head(conn_t *c)
{
    loop_t *L = c->L;
    buf_t *in = &c->e.in;
    if (c->qlen == PIPE_MAX || (c->peer && buf_used(&c->peer->e.out) >= BUF_CAP))
        return 0;
    if (c->peer && cfg.upstream_keepalive == 0 && c->qlen)
        return 0; /* one request per connection: the next waits for a new one */
    /* Behind a long answer, a near upstream gets the next request once that
     * answer is in. Its round trip is nothing beside the answer's bytes, so
     * sending on ahead gains no rate; it only lets one client's pipelined
     * answers leave the upstream in one burst ahead of the other clients'
     * (64 clients x 16 pipelined 64 KiB answers on loopback, 4 rounds: p99
     * 27-33 ms one at a time against 45-55 sent on ahead, the same req/s,
     * at 1.1 of the CPU per answer). A far upstream keeps the pipelining,
     * which fills its round trip. */
    if (c->big && c->qlen && c->peer && c->peer->near)
        return 0;
    http_request_t r;
    int n = http_parse_request(buf_head(in), buf_used(in), HTTP_MAX_HEAD, &r);
    if (n == HTTP_PARTIAL) {
        if (!c->req_start)
            c->req_start = time_now_ms();
        return 0;
    }
    int64_t clen;
    int chunked;
    const char *why;
    int st = http_check_request(n, &r, &clen, &chunked, &why);
    if (st) { /* as the core answers it: nothing of it is forwarded */
        reject(c, st, why);
        return 0;
    }
    if (r.method_len == 7 && memcmp(r.method, "CONNECT", 7) == 0) {
        /* A tunnel: not what a reverse proxy relays. */
        reject(c, 501, "CONNECT is not supported by this proxy\n");
        return 0;
    }
    if (http_check_host(&r) != 0) {
        reject(c, 400, "missing, repeated or invalid Host\n");
        return 0;
    }
    int close = !http_keep_alive(&r);
    int body = chunked || clen > 0;
    if (!body && c->qlen == 0 && local(c, &r, close)) {
        buf_consume(in, (size_t)n);
        c->req_start = 0;
        return 1;
    }
    if (!body && r.path_len == 8 && memcmp(r.path, "/metrics", 8) == 0 && c->qlen)
        return 0; /* ours, after the answers in flight */
    if (!c->peer) {
        size_t u = L->rr++ % n_ups;
        c->peer = pool_get(L, c, u, 0);
        if (!c->peer) {
            c->q[(c->qhead + c->qlen++) % PIPE_MAX] = (flight_t){0, (uint8_t)close, 0};
            fail_front(c, 502, "upstream unreachable\n");
            buf_consume(in, (size_t)n);
            if (body)
                c->closing = 1; /* its body is still coming: no way to skip it safely */
            return !c->closing;
        }
        c->replay = c->peer->reused;
        c->retried = 0;
        c->sent = 0;
        c->answered = 0;
        c->up_mark = time_now_ms();
    }
    if (c->qlen == 0)
        c->up_mark = time_now_ms();
    buf_t *out = &c->peer->e.out;
    if (put_request(c, out, &r, (size_t)n) < 0) {
        reject(c, 503, "out of memory\n");
        return 0;
    }
    c->q[(c->qhead + c->qlen++) % PIPE_MAX] =
        (flight_t){(uint8_t)(r.method_len == 4 && memcmp(r.method, "HEAD", 4) == 0), (uint8_t)close,
                   (uint8_t)(r.minor == 0)};
    buf_consume(in, (size_t)n);
    c->req_start = 0;
    if (body || !idempotent(&r)) {
        /* Not to be sent twice: what was kept for a retry goes. */
        if (c->replay)
            buf_consume(out, c->sent);
        c->replay = 0;
        c->sent = 0;
    }
    if (chunked) {
        c->fwd = F_CHUNKED;
        memset(&c->fwd_ch, 0, sizeof c->fwd_ch);
    } else if (clen > 0) {
        c->fwd = F_LENGTH;
        c->fwd_left = (uint64_t)clen;
    }
    if (close)
        c->reject = -1; /* no more requests: what follows is not read */
    return 1;
}

/* Move body bytes of the request being forwarded, as the upstream side has
 * room. Returns 1 when some moved. */
static int forward_body(conn_t *c)
{
    buf_t *in = &c->e.in, *out = &c->peer->e.out;
    size_t n = buf_used(in), room = BUF_CAP > buf_used(out) ? BUF_CAP - buf_used(out) : 0;
    if (n > room)
        n = room;
    if (n == 0)
        return 0;
    if (c->peer->wclosed) { /* the upstream reads no more: nowhere to send it */
        if (c->fwd == F_LENGTH && n > c->fwd_left)
            n = (size_t)c->fwd_left;
        buf_consume(in, n);
        if (c->fwd == F_LENGTH && (c->fwd_left -= n) == 0)
            c->fwd = F_HEAD;
        return 1;
    }
    if (c->fwd == F_LENGTH) {
        if (n > c->fwd_left)
            n = (size_t)c->fwd_left;
        c->fwd_left -= n;
        if (c->fwd_left == 0)
            c->fwd = F_HEAD;
    } else {
        size_t used;
        int rc = http_scan_chunked(&c->fwd_ch, buf_head(in), n, &used);
        if (rc < 0) {
            /* Part of it went on already, and no answer can take its place
             * in order: both connections go, once what was relayed is
             * written. */
            metrics_error(ME_BAD_REQUEST);
            peer_close(c->L, c->peer);
            c->qlen = 0;
            c->fwd = F_HEAD;
            c->closing = 1;
            return 0;
        }
        n = used;
        if (rc == 1)
            c->fwd = F_HEAD;
    }
    if (buf_append(out, buf_head(in), n) < 0)
        return 0;
    buf_consume(in, n);
    return 1;
}

static int forward(conn_t *c)
{
    int moved = 0;
    while (!c->closing && buf_used(&c->e.in)) {
        if (c->fwd != F_HEAD) {
            if (!c->peer || !forward_body(c))
                break;
        } else if (c->reject) {
            break;
        } else if (c->line || (!c->http && proto_detect(buf_head(&c->e.in), buf_used(&c->e.in)) ==
                                               PROTO_LINE)) {
            c->line = 1;
            if (!line_step(c))
                break;
        } else if (!forward_head(c)) {
            break;
        } else {
            c->http = 1;
        }
        moved = 1;
    }
    return moved;
}

/* ---- answers: upstream -> client ---- */

/* The head (len bytes) of the answer to f, rewritten for the client, into
 * b. Returns 0 or -ENOMEM. */
static int put_answer(buf_t *b, const char *head, size_t len, const http_response_t *res,
                      const flight_t *f, int close)
{
    char *w = head_begin(b, len, res->num_headers);
    if (!w)
        return -ENOMEM;
    /* The status line as the upstream wrote it, but for the version. */
    const char *eol = head;
    while (*eol != '\r' && *eol != '\n')
        eol++;
    w = PUT(w, "HTTP/1.1");
    w = put(w, head + 8, (size_t)(eol - head - 8));
    w = PUT(w, "\r\n");
    /* A 1xx or 204 has no body (RFC 9112 6.3), and must not say it has one
     * (RFC 9110 8.6, 9112 6.1): a Content-Length or Transfer-Encoding an
     * upstream sent anyway could make a client read the next answer as its
     * body. What the upstream sent after such a head is not relayed. */
    w = put_fields(w, res->headers, res->num_headers,
                   res->status < 200 || res->status == 204 ? SKIP_FRAMING : 0,
                   res->minor == 0 ? via10 : via11, sizeof via11 - 1, NULL, 0);
    if (close)
        w = PUT(w, "Connection: close\r\n\r\n");
    else if (f->http10)
        w = PUT(w, "Connection: keep-alive\r\n\r\n");
    else
        w = PUT(w, "\r\n");
    head_end(b, w);
    return 0;
}

/* The answer to the front request is through. */
static void answer_done(conn_t *c)
{
    const flight_t *f = &c->q[c->qhead];
    if (f->close || c->rsp == R_CLOSE)
        c->closing = 1;
    if (!c->rsp_keep && c->peer)
        c->peer->done = 1;
    c->qhead = (c->qhead + 1) % PIPE_MAX;
    c->qlen--;
    c->rsp = R_HEAD;
    c->answered = 0;
    c->up_mark = time_now_ms();
}

/* Take an answer's head from the upstream and queue it for the client.
 * Returns 1 when it took one, 0 when more is needed, -1 when the upstream
 * is broken (502 given, the connection closed). */
static int relay_head(conn_t *c)
{
    peer_t *p = c->peer;
    http_response_t res;
    const flight_t *f = &c->q[c->qhead];
    int n = http_parse_response(buf_head(&p->e.in), buf_used(&p->e.in), HTTP_MAX_HEAD, &res);
    if (n == HTTP_PARTIAL)
        return 0;
    int64_t clen = -1;
    int chunked = 0;
    if (n < 0 || res.major != 1 || res.status == 101 ||
        http_body_framing(res.headers, res.num_headers, &clen, &chunked) != 0 ||
        (chunked && f->http10)) {
        STAT_ADD(p->pool->failed, 1);
        fail_front(c, 502, "bad answer from the upstream\n");
        peer_close(c->L, p);
        return -1;
    }
    pool_t *pool = p->pool;
    STAT_ADD(pool->code[res.status], 1);
    if (c->replay) { /* an answer began: nothing will be sent again */
        buf_consume(&p->e.out, c->sent);
        c->replay = 0;
        c->sent = 0;
    }
    if (res.status < 200) { /* 1xx: more heads follow for the same request */
        if (!f->http10)     /* informational: out of memory, it is left out */
            (void)put_answer(&c->e.out, buf_head(&p->e.in), (size_t)n, &res, f, 0);
        buf_consume(&p->e.in, (size_t)n);
        return 1;
    }
    c->answered = 1;
    const http_header_t *conn = http_find_header(res.headers, res.num_headers, "Connection");
    c->rsp_keep = res.minor >= 1
                      ? !(conn && http_has_token(conn->value, conn->value_len, "close"))
                      : conn && http_has_token(conn->value, conn->value_len, "keep-alive");
    int bodiless = f->head || res.status == 204 || res.status == 304;
    c->rsp = bodiless ? R_LENGTH : chunked ? R_CHUNKED : clen >= 0 ? R_LENGTH : R_CLOSE;
    c->rsp_left = bodiless ? 0 : (uint64_t)clen;
    c->big = c->rsp == R_LENGTH && c->rsp_left >= SPLICE_MIN;
    if (c->rsp == R_CHUNKED)
        memset(&c->rsp_ch, 0, sizeof c->rsp_ch);
    if (c->rsp == R_CLOSE)
        c->rsp_keep = 0;
    /* The final answer to a request whose body is still being sent, from
     * an upstream that closes (413, say): the rest of the body goes nowhere,
     * and would read as requests: the client's connection closes after it. */
    int early = c->fwd != F_HEAD && c->qlen == 1 && !c->rsp_keep;
    if (early) {
        c->fwd = F_HEAD;
        c->reject = c->reject ? c->reject : -1;
        p->done = 1;
        buf_consume(&p->e.out, buf_used(&p->e.out)); /* a body: nothing kept for a retry */
    }
    int close = early || f->close || c->rsp == R_CLOSE || (c->reject > 0 && c->qlen == 1);
    if (put_answer(&c->e.out, buf_head(&p->e.in), (size_t)n, &res, f, close) < 0) {
        peer_close(c->L, p); /* out of memory: no answer can be relayed */
        c->qlen = 0;
        c->closing = 1;
        return -1;
    }
    metrics_request(MC_EXT, metrics_status_slot(res.status));
    buf_consume(&p->e.in, (size_t)n);
    if (c->rsp == R_LENGTH && c->rsp_left == 0)
        answer_done(c);
    return 1;
}

/* Move answer bytes from the upstream to the client, as the client side
 * has room. Returns 1 when something moved. */
static int relay(conn_t *c)
{
    int moved = 0;
    for (peer_t *p = c->peer; p && buf_used(&p->e.in) && buf_used(&c->e.out) < BUF_CAP;
         p = c->peer) {
        if (c->qlen == 0) { /* bytes nobody asked for: the connection is broken */
            p->done = 1;
            buf_consume(&p->e.in, buf_used(&p->e.in));
            break;
        }
        if (c->rsp == R_HEAD) {
            int rc = relay_head(c);
            if (rc <= 0)
                return moved || rc < 0;
            moved = 1;
            continue;
        }
        size_t n = buf_used(&p->e.in), room = BUF_CAP - buf_used(&c->e.out), used;
        if (n > room)
            n = room;
        int end = 0;
        if (c->rsp == R_LENGTH) {
            if (n > c->rsp_left)
                n = (size_t)c->rsp_left;
            c->rsp_left -= n;
            end = c->rsp_left == 0;
        } else if (c->rsp == R_CHUNKED) {
            int rc = http_scan_chunked(&c->rsp_ch, buf_head(&p->e.in), n, &used);
            if (rc < 0) {
                /* Broken framing mid-answer: as a close there (upstream_failed),
                 * the client gets what was valid, which lacks the last chunk
                 * and so cannot look complete, and then the close; the
                 * answers behind it were asked on the same connection. */
                STAT_ADD(p->pool->truncated, 1);
                c->closing = 1;
                c->qlen = 0;
                peer_close(c->L, p);
                return 1;
            }
            n = used;
            end = rc == 1;
        }
        if (buf_append(&c->e.out, buf_head(&p->e.in), n) < 0)
            break;
        buf_consume(&p->e.in, n);
        moved = 1;
        if (end)
            answer_done(c);
    }
    return moved;
}

/* A near upstream's connection (its handshake's round trip under
 * NEAR_RTT_US: loopback, a LAN) is marked near (see forward_head) and gets
 * a fixed receive buffer. Autotuned, a pooled connection that carries
 * long answers back to back grew to tcp_rmem's maximum (32 MiB here): 64
 * clients x 16 pipelined 1 MiB answers went at 1.2k a second, loadgen
 * paying 353-367 us an answer; with this, 1.7-2.4k and 196-308 us (2
 * rounds). Set once connected: set before, it would also shrink the window
 * scale of the handshake, and no far upstream could get a large window (set
 * before, on loopback: 2.6-2.9k).
 * 256 KiB still lets one connection carry 2 Gbit/s at 1 ms. A far upstream
 * keeps the autotuning: its window must cover the round trip (256 KiB at
 * 20 ms would cap an answer at 13 MB/s). Best effort: left autotuned, the
 * connection works as before. */
static void near_rcvbuf(peer_t *p)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    int rb = NEAR_RCVBUF;
    p->near =
        getsockopt(p->e.fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_rtt < NEAR_RTT_US;
    if (p->near)
        (void)setsockopt(p->e.fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
}

/* ---- splice: long bodies by a pipe ---- */

enum { SPL_UNKNOWN, SPL_PAYS, SPL_NOT }; /* peer_t.splice */

/* Does splicing pay on this upstream connection (--splice)? Only where its
 * segments are large (loopback's 64 KiB): on a path of 1,500-byte packets every
 * segment arrives in a buffer of its own, which splice turns into a pipe
 * slot of its own (16 to a pipe: 23 KiB) after copying its bytes into a
 * page; that costs the proxy more than one read of 64 KiB (the bench's
 * 64 KiB answers over 20 ms links: 0.84 of the anchors' CPU per request
 * spliced, twice; 0.57 and 0.67 copied).
 * And where it does, the upstream is on this machine, and so, often, is
 * the client: the pages handed over stay referenced until the client has
 * read them, so the upstream's socket allocates fresh ones for its next
 * writes, and the client reads pages that were never in its cache. Per
 * 1 MiB answer (3 rounds), server-epoll behind the proxy paid 243-277 us
 * spliced against 179-187 copied, loadgen 189-209 against 154-160, the
 * proxy 169-183 against 244-261: 601-669 us in all against 578-607; and
 * with loadgen and the upstream on one core, a fifth to a third fewer
 * answers a second (the bench's proxy scenario, 64 KiB and 1 MiB on
 * loopback: 0.77-1.16 of HAProxy's rate spliced, 1.15-1.55 copied). Hence
 * --splice, off by default. */
static int splice_pays(peer_t *p)
{
    if (p->splice == SPL_UNKNOWN) { /* once, at its first long body: short answers pay no call */
        int mss = 0;
        socklen_t len = sizeof mss;
        p->splice =
            getsockopt(p->e.fd, IPPROTO_TCP, TCP_MAXSEG, &mss, &len) == 0 && mss >= SPLICE_MSS
                ? SPL_PAYS
                : SPL_NOT;
    }
    return p->splice == SPL_PAYS;
}

/* Make c's pipe if it has none. Returns 0, or -1 when none can be made
 * (out of descriptors): the body is then copied, as a short one is. */
static int pipe_make(conn_t *c)
{
    if (c->pipe[0] >= 0)
        return 0;
    if (__atomic_add_fetch(&pipes_open, 1, __ATOMIC_RELAXED) > pipe_budget ||
        pipe2(c->pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        __atomic_sub_fetch(&pipes_open, 1, __ATOMIC_RELAXED);
        c->pipe[0] = c->pipe[1] = -1;
        return -1;
    }
    /* 64 KiB, or two pages once the user's pipes pass fs.pipe-user-pages-soft. */
    int cap = fcntl(c->pipe[1], F_GETPIPE_SZ);
    c->pipe_cap = cap > 0 ? (uint32_t)cap : 4096;
    return 0;
}

/* Close c's pipe (empty, or its bytes no one's any more). */
static void pipe_free(conn_t *c)
{
    if (c->pipe[0] < 0)
        return;
    close(c->pipe[0]);
    close(c->pipe[1]);
    __atomic_sub_fetch(&pipes_open, 1, __ATOMIC_RELAXED);
    c->pipe[0] = c->pipe[1] = -1;
    c->piped = 0;
}

/* Move body bytes of c's answer from the upstream's socket into the pipe,
 * as much as it has room for. As end_recv. */
static ssize_t splice_in(conn_t *c)
{
    end_t *e = &c->peer->e;
    size_t want = c->pipe_cap - c->piped;
    if (want > c->rsp_left)
        want = (size_t)c->rsp_left;
    if (!e->can_read || e->eof || want == 0)
        return 0;
    ssize_t n = splice(e->fd, NULL, c->pipe[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        /* Short is no sign of an empty socket here: the pipe's slots (a
         * page of the socket's each) may run out before its bytes do. */
        c->piped += (uint32_t)n;
        STAT_ADD(c->peer->pool->spliced, (uint64_t)n);
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        /* EAGAIN: the socket is empty, or the pipe's slots are full; only
         * an empty pipe tells which. Else the next try, once the pipe has
         * gone to the client, does: no edge is waited for that has come. */
        e->can_read = errno == EINTR || c->piped > 0;
        return 0;
    }
    e->eof = 1;
    e->err = n < 0 ? errno : 0;
    return -1;
}

/* Move the pipe's bytes into the client's socket. As end_write. */
static ssize_t splice_out(conn_t *c)
{
    end_t *e = &c->e;
    if (!e->can_write || c->piped == 0)
        return 0;
    ssize_t w = splice(c->pipe[0], NULL, e->fd, NULL, c->piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (w > 0) {
        c->piped -= (uint32_t)w;
        if (c->piped)
            e->can_write = 0; /* short: the socket's buffer is full, as for send */
        return w;
    }
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
        e->can_write = errno == EINTR;
        return 0;
    }
    e->err = w < 0 ? errno : EPIPE; /* 0: the pipe lost its bytes, never expected */
    return -1;
}

/* Write to the client what waits for it: the pipe's bytes first (they
 * came before anything in e.out), then e.out's. As end_write. */
static ssize_t client_write(conn_t *c)
{
    ssize_t w = splice_out(c);
    if (w < 0 || c->piped)
        return w;
    ssize_t o = end_write(&c->e, buf_head(&c->e.out), buf_used(&c->e.out));
    if (o < 0)
        return o;
    buf_consume(&c->e.out, (size_t)o);
    return w + o;
}

/* Read from c's upstream. The body of an answer whose length is known
 * (Content-Length, or the close) goes straight into the client's buffer
 * once nothing else waits before it: one copy less; a long one of known
 * length goes by the pipe once the client's buffer is sent: no copy. After
 * such a body, the next head is read alone (READ_MIN), so that its body is
 * left in the socket for the pipe. As end_recv. */
static ssize_t read_upstream(conn_t *c)
{
    peer_t *p = c->peer;
    if (buf_used(&p->e.in) || !c->qlen || !(c->rsp == R_LENGTH || c->rsp == R_CLOSE))
        return end_recv(&p->e, &p->e.in, BUF_CAP,
                        c->big && c->rsp == R_HEAD && c->qlen ? READ_MIN : SIZE_MAX);
    if (cfg.splice && c->rsp == R_LENGTH && c->rsp_left >= SPLICE_MIN && splice_pays(p) &&
        pipe_make(c) == 0) {
        if (buf_used(&c->e.out))
            return 0; /* it goes first: the body waits in the socket meanwhile */
        ssize_t n = splice_in(c);
        if (n > 0 && (c->rsp_left -= (uint64_t)n) == 0)
            answer_done(c);
        return n;
    }
    size_t max = c->rsp == R_LENGTH ? (size_t)c->rsp_left : SIZE_MAX;
    ssize_t n = end_recv(&p->e, &c->e.out, BUF_CAP, max);
    if (n > 0 && c->rsp == R_LENGTH && (c->rsp_left -= (uint64_t)n) == 0)
        answer_done(c);
    return n;
}

/* ---- failures of the upstream side ---- */

/* Send again, on a fresh connection, what a pooled one took and lost: only
 * idempotent requests without a body, before any answer byte, once. */
static int retry(conn_t *c)
{
    peer_t *old = c->peer;
    if (!c->replay || c->retried || !old->reused || c->answered)
        return 0;
    size_t u = (size_t)(old->up - ups);
    buf_t out = old->e.out;
    old->e.out = (buf_t){0};
    STAT_ADD(old->pool->retries, 1);
    peer_close(c->L, old);
    peer_t *p = pool_get(c->L, c, u, 1);
    if (!p) {
        buf_free(&out);
        return 0;
    }
    p->e.out = out;
    c->peer = p;
    c->sent = 0;
    c->retried = 1;
    c->up_mark = time_now_ms();
    return 1;
}

/* The upstream connection failed (refused, reset, closed, timed out). */
static void upstream_failed(conn_t *c, int timeout)
{
    peer_t *p = c->peer;
    pool_t *pool = p->pool;
    if (!timeout && retry(c))
        return;
    if (timeout)
        STAT_ADD(pool->timeouts, 1);
    else
        STAT_ADD(pool->failed, 1);
    peer_close(c->L, p);
    if (c->qlen == 0)
        return;
    if (c->answered) { /* mid-answer: close, never a short answer that looks whole */
        STAT_ADD(pool->truncated, 1);
        c->closing = 1;
        c->qlen = 0;
        return;
    }
    fail_front(c, timeout ? 504 : 502,
               timeout ? "upstream timed out\n" : "upstream refused or reset\n");
    if (c->qlen || c->fwd != F_HEAD) { /* the others were sent on that connection too */
        c->qlen = 0;
        c->closing = 1;
    }
}

/* ---- one client's relay ---- */

static void client_close(conn_t *c)
{
    loop_t *L = c->L;
    if (c->peer) {
        if (c->qlen || c->fwd != F_HEAD)
            c->peer->done = 1; /* half-read or half-sent: never pooled */
        pool_put(L, c);
    }
    pipe_free(c);
    metrics_conn(0);
    STAT_ADD(L->clients, -1);
    if (c->prev)
        c->prev->next = c->next;
    else
        L->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    end_close(L, &c->e);
}

/* Does idle c hold buffers (empty ones: nothing in flight)? A keep-alive
 * client gives them back after SHRINK_MS, so that ten thousand idle ones
 * hold no buffers, while a busy one keeps them: no allocation per request. */
static int idle_buffers(const conn_t *c)
{
    return c->qlen == 0 && !c->peer && !c->req_start && buf_used(&c->e.in) == 0 &&
           buf_used(&c->e.out) == 0 && c->piped == 0 &&
           (c->e.in.cap || c->e.out.cap || c->pipe[0] >= 0);
}

/* When c must be looked at next: the upstream's time to answer, the
 * header timeout, or the idle timeout. */
static int64_t deadline(const conn_t *c)
{
    const session_cfg_t *s = &cfg.session;
    if (c->qlen && c->peer)
        return c->up_mark + cfg.upstream_timeout_ms;
    if (c->req_start && s->header_timeout_ms)
        return c->req_start + s->header_timeout_ms;
    if (c->e.out.len > c->e.out.off || c->piped)
        return c->last + (s->idle_timeout_ms ? s->idle_timeout_ms : cfg.upstream_timeout_ms);
    int64_t idle = s->idle_timeout_ms ? c->last + s->idle_timeout_ms : 0;
    if (idle_buffers(c) && (!idle || c->last + SHRINK_MS < idle))
        return c->last + SHRINK_MS;
    return idle;
}

/* Move every byte that can move, in both directions, then settle what the
 * connection waits for next. The one place where a client's state changes
 * (but for its deadline, see expire). */
static void pump(conn_t *c)
{
    loop_t *L = c->L;
    for (int progress = 1; progress;) {
        progress = 0;
        /* Bytes in are progress: a head longer than the read's room needs
         * the next read before forward can take it. */
        if ((c->closing ? 0 : end_read(&c->e, BUF_CAP)) > 0) {
            c->last = time_now_ms();
            progress = 1;
        }
        progress |= forward(c);
        peer_t *p = c->peer;
        if (p && p->connecting && p->e.can_write) {
            int rc = net_connect_result(p->e.fd);
            p->connecting = rc != 0 && rc == -EINPROGRESS;
            if (rc == 0)
                near_rcvbuf(p);
            if (rc != 0 && rc != -EINPROGRESS) {
                upstream_failed(c, 0);
                progress = 1;
                continue;
            }
        }
        if (p && !p->connecting) {
            size_t unsent = buf_used(&p->e.out) - c->sent;
            ssize_t w = p->wclosed ? 0 : end_write(&p->e, buf_head(&p->e.out) + c->sent, unsent);
            if (w < 0) {
                /* Not a failure yet: an upstream that answers early (413)
                 * closes before it reads the rest, and its answer waits to
                 * be read; if there is none, the read's EOF tells. */
                p->wclosed = 1;
                p->done = 1;
                progress = 1;
            } else if (w > 0) {
                if (c->replay)
                    c->sent += (size_t)w;
                else
                    buf_consume(&p->e.out, (size_t)w);
                progress = 1;
            }
            if (read_upstream(c) > 0) {
                c->up_mark = time_now_ms();
                progress = 1;
            }
        }
        progress |= relay(c);
        p = c->peer;
        if (p && p->e.eof && buf_used(&p->e.in) == 0) {
            if (c->rsp == R_CLOSE && c->qlen) { /* the answer ends with the connection */
                answer_done(c);
                p->done = 1;
            } else if (c->qlen) {
                upstream_failed(c, 0);
                progress = 1;
                continue;
            }
            if (c->peer && c->qlen == 0) {
                c->peer->done = 1;
                pool_put(L, c);
            }
        }
        ssize_t w = client_write(c);
        if (w < 0 || (c->e.eof && c->e.err)) { /* the client is gone */
            if (c->qlen || c->fwd != F_HEAD || c->piped)
                STAT_ADD(L->aborts, 1);
            client_close(c);
            return;
        }
        if (w > 0) {
            c->last = c->up_mark = time_now_ms();
            progress = 1;
        }
        /* Every answer in, nothing half-sent: the connection goes back. */
        if (c->peer && c->qlen == 0 && c->fwd == F_HEAD)
            pool_put(L, c);
        /* What was rejected is answered once the answers before it are. */
        if (c->reject > 0 && c->qlen == 0 && !c->closing) {
            respond(c, c->reject, c->why, 1);
            progress = 1;
        }
    }
    if (c->e.eof && c->fwd != F_HEAD && buf_used(&c->e.in) == 0) { /* gone mid-body */
        STAT_ADD(L->aborts, 1);
        client_close(c);
        return;
    }
    /* Nothing in flight, nothing to write, and no more requests to come. */
    if (c->qlen == 0 && buf_used(&c->e.out) == 0 && c->piped == 0 &&
        (c->closing || c->reject < 0 || c->e.eof)) {
        client_close(c);
        return;
    }
    (void)timers_set(&L->timers, &c->e.timer, deadline(c));
}

/* c's deadline passed. */
static void expire(conn_t *c)
{
    int64_t now = time_now_ms();
    if (deadline(c) > now) { /* moved on since: file it again */
        (void)timers_set(&c->L->timers, &c->e.timer, deadline(c));
        return;
    }
    if (c->qlen && c->peer) {
        if ((buf_used(&c->e.out) || c->piped) && !c->e.can_write) { /* waiting for the client */
            STAT_ADD(c->L->aborts, 1);
            client_close(c);
            return;
        }
        upstream_failed(c, 1);
        pump(c);
        return;
    }
    if (idle_buffers(c)) { /* the shrink is due (or the idle close, which frees them too) */
        buf_free(&c->e.in);
        buf_free(&c->e.out);
        pipe_free(c);
        c->e.grow = 0;
        int64_t d = deadline(c);
        if (d == 0 || d > now) {
            (void)timers_set(&c->L->timers, &c->e.timer, d);
            return;
        }
    }
    if (c->req_start) {
        metrics_error(ME_HEADER_TIMEOUT);
        if (!c->closing && c->qlen == 0) {
            respond(c, 408, "request not complete in time\n", 1);
            pump(c);
            return;
        }
    } else {
        metrics_error(ME_IDLE_TIMEOUT);
    }
    client_close(c);
}

/* ---- a loop's side ---- */

void relay_accept(relay_loop_t *L, int fd)
{
    conn_t *c = calloc(1, sizeof *c);
    if (!c || timers_reserve(&L->timers, L->timers.n + 1) < 0) {
        free(c);
        close(fd);
        metrics_conn(0);
        metrics_error(ME_ACCEPT);
        return;
    }
    c->e.kind = K_CLIENT;
    c->e.fd = fd;
    c->pipe[0] = c->pipe[1] = -1;
    c->L = L;
    c->last = time_now_ms();
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char *a = c->xff + 2;
    memcpy(c->xff, ", unknown", 10);
    if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, a, INET6_ADDRSTRLEN);
    else if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, a, INET6_ADDRSTRLEN);
    c->xff_len = strlen(c->xff);
    if (end_watch(L, &c->e) < 0) {
        close(fd);
        free(c);
        metrics_conn(0);
        metrics_error(ME_ACCEPT);
        return;
    }
    STAT_ADD(L->clients, 1);
    c->next = L->conns;
    if (c->next)
        c->next->prev = c;
    L->conns = c;
    (void)timers_set(&L->timers, &c->e.timer, deadline(c));
}

void relay_event(relay_loop_t *L, void *ptr, unsigned ev)
{
    end_t *e = ptr;
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        e->can_read = 1;
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        e->hup = 1;
    if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        e->can_write = 1;
    if (e->kind == K_CLIENT) {
        pump((conn_t *)e);
    } else if (e->kind == K_PEER) {
        peer_t *p = (peer_t *)e;
        if (p->client)
            pump(p->client);
        else
            pool_drop(L, p, 0);
    }
}

int relay_starts(const void *ptr)
{
    const end_t *e = ptr;
    const conn_t *c = ptr; /* a client's end comes first in its conn_t */
    return e->kind == K_CLIENT && c->qlen == 0 && c->fwd == F_HEAD;
}

int relay_timeout(const relay_loop_t *L)
{
    return timers_timeout(&L->timers, time_now_ms());
}

uint64_t relay_clients(const relay_loop_t *L)
{
    return STAT_GET(L->clients);
}

static void on_timer(loop_t *L, timer_node_t *t)
{
    end_t *e = (end_t *)((char *)t - offsetof(end_t, timer));
    if (e->kind == K_CLIENT)
        expire((conn_t *)e);
    else if (e->kind == K_PEER && !((peer_t *)e)->client)
        pool_drop(L, (peer_t *)e, 1);
}

void relay_timers(relay_loop_t *L)
{
    timer_node_t *t;
    while ((t = timers_expired(&L->timers, time_now_ms())) != NULL)
        on_timer(L, t);
    reap(L);
}

void relay_stop(relay_loop_t *L)
{
    L->stopping = 1;
    for (size_t u = 0; u < n_ups; u++)
        while (L->pools[u].idle)
            pool_drop(L, L->pools[u].idle, 1);
    for (conn_t *c = L->conns, *next; c; c = next) {
        next = c->next;
        if (!c->reject)
            c->reject = -1;
        pump(c);
    }
}

void relay_end(relay_loop_t *L)
{
    while (L->conns)
        client_close(L->conns);
    for (size_t u = 0; u < n_ups; u++)
        while (L->pools[u].idle)
            pool_drop(L, L->pools[u].idle, 1);
    reap(L);
    timers_free(&L->timers);
}

/* /metrics: the pools' figures, summed over the loops, per upstream. */
static void write_metrics(buf_t *out, void *ctx)
{
    (void)ctx;
    static const struct {
        const char *name, *help;
        size_t off;
        int gauge;
    } m[] = {
        {"proxy_upstream_connections_opened_total", "upstream connections opened",
         offsetof(pool_t, opened), 0},
        {"proxy_upstream_connections_reused_total", "requests sent on a pooled connection",
         offsetof(pool_t, reused), 0},
        {"proxy_upstream_connections_failed_total", "upstream connections refused, reset or broken",
         offsetof(pool_t, failed), 0},
        {"proxy_upstream_retries_total", "requests sent again after a pooled connection failed",
         offsetof(pool_t, retries), 0},
        {"proxy_upstream_timeouts_total", "answers not begun within --upstream-timeout-ms",
         offsetof(pool_t, timeouts), 0},
        {"proxy_upstream_truncated_total", "answers cut by the upstream: the client closed",
         offsetof(pool_t, truncated), 0},
        {"proxy_upstream_spliced_bytes_total",
         "answer bytes spliced into clients' pipes, not copied", offsetof(pool_t, spliced), 0},
        {"proxy_pool_idle", "idle upstream connections in the pools", offsetof(pool_t, n_idle), 1},
        {"proxy_upstream_active", "upstream connections lent to clients",
         offsetof(pool_t, n_active), 1},
    };
    for (size_t k = 0; k < sizeof m / sizeof *m; k++) {
        (void)buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m[k].name, m[k].help, m[k].name,
                         m[k].gauge ? "gauge" : "counter");
        for (size_t u = 0; u < n_ups; u++) {
            uint64_t sum = 0;
            for (int i = 0; i < n_loops; i++)
                sum += STAT_GET(*(uint64_t *)((char *)&loops[i].pools[u] + m[k].off));
            (void)buf_printf(out, "%s{upstream=\"%s\"} %llu\n", m[k].name, ups[u].name,
                             (unsigned long long)sum);
        }
    }
    (void)buf_printf(out, "# HELP proxy_upstream_responses_total answers from the upstreams "
                          "by status\n# TYPE proxy_upstream_responses_total counter\n");
    for (size_t u = 0; u < n_ups; u++)
        for (int code = 100; code < 600; code++) {
            uint64_t sum = 0;
            for (int i = 0; i < n_loops; i++)
                sum += STAT_GET(loops[i].pools[u].code[code]);
            if (sum)
                (void)buf_printf(
                    out, "proxy_upstream_responses_total{upstream=\"%s\",code=\"%d\"} %llu\n",
                    ups[u].name, code, (unsigned long long)sum);
        }
    uint64_t aborts = 0;
    for (int i = 0; i < n_loops; i++)
        aborts += STAT_GET(loops[i].aborts);
    (void)buf_printf(out,
                     "# HELP proxy_client_aborts_total clients gone mid-request or mid-answer\n"
                     "# TYPE proxy_client_aborts_total counter\nproxy_client_aborts_total %llu\n",
                     (unsigned long long)aborts);
}

/* Resolve --upstream HOST:PORT into ups[i]. */
static int resolve_upstreams(void)
{
    for (size_t i = 0; i < cfg.n_upstreams; i++) {
        const char *v = cfg.upstreams[i], *colon = strrchr(v, ':');
        char host[64], err[256];
        snprintf(ups[i].name, sizeof ups[i].name, "%s", v);
        snprintf(host, sizeof host, "%.*s", (int)(colon - v), v);
        if (net_resolve(host, atoi(colon + 1), &ups[i].addr, &ups[i].addrlen, err, sizeof err) <
            0) {
            fprintf(stderr, "server-proxy: --upstream %s: %s\n", v, err);
            return -EINVAL;
        }
    }
    n_ups = cfg.n_upstreams;
    return 0;
}

relay_loop_t *relay_init(const server_cfg_t *c, int n)
{
    cfg = *c;
    if (resolve_upstreams() < 0)
        return NULL;
    loops = calloc((size_t)n, sizeof *loops);
    if (!loops)
        goto err;
    n_loops = n;
    for (int i = 0; i < n; i++)
        if (!(loops[i].pools = calloc(n_ups, sizeof *loops[i].pools)))
            goto err;
    /* Every client may hold its socket and an upstream connection. */
    struct rlimit rl;
    if (cfg.max_conns && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        uint64_t fds = rl.rlim_cur > SERVER_FD_RESERVE ? rl.rlim_cur - SERVER_FD_RESERVE : 0;
        uint64_t clients = 2 * (uint64_t)cfg.max_conns;
        pipe_budget = fds > clients ? (fds - clients) / 2 : 0;
    }
    metrics_add_writer(write_metrics, NULL);
    return loops;
err:
    fprintf(stderr, "server-proxy: out of memory\n");
    for (int i = 0; loops && i < n; i++)
        free(loops[i].pools);
    free(loops);
    loops = NULL;
    return NULL;
}
