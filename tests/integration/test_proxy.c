/* Integration tests of bin/server-proxy, the reverse proxy, as a real
 * process. In front of a real bin/server-epoll: its routes, HEAD, bodies of
 * 0 B to 1 MiB byte-exact, keep-alive, pipelining in order, HTTP/1.0. In
 * front of fake upstreams run in threads of this test: what reaches the
 * upstream (Via, X-Forwarded-For, no hop-by-hop header, request bodies
 * byte-exact), a chunked answer passed through, smuggling shapes rejected
 * before a byte goes upstream, and the upstream's faults (nothing
 * listening: 502; a reset before the answer: 502; a close mid-body: the
 * client's connection closed short; silence: 504 within the timeout). The
 * pool: one upstream connection for many requests, one per request with
 * --upstream-keepalive 0, a GET retried and a POST never sent twice when a
 * pooled connection turns out closed. A client that leaves mid-answer
 * leaves no upstream connection, pool entry or descriptor behind; one that
 * does not read keeps the proxy's memory bounded. The line protocol gets
 * ERR; bad flags exit 2 with one line.
 *
 * Each test starts its own proxy (and upstream) on free ports; every
 * process is stopped by its PID, every fake's threads are joined, every
 * wait is bounded. Skipped when bin/server-proxy is not built. */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/http.h"
#include "core/net.h"
#include "../lib/tlib.h"

#define T       10000 /* ms: the bound of an ordinary wait (sanitizers, a busy machine) */
#define STOP_MS 5000  /* SIGTERM to exit */
#define SETTLE  200   /* ms for a proxy to act on what it has been sent, before counting */

#define HELLO_BODY "hello, world\n"

/* ---- fake upstreams: a listening socket and a thread per connection ---- */

enum fake_mode {
    F_ECHO,          /* answers each request with its head as received, then its decoded body */
    F_CHUNKED,       /* answers each request with chunked_answer (a chunked body) */
    F_RESET,         /* reads a request head, then resets the connection */
    F_HALF,          /* reads a request head, sends half the body it announces, closes */
    F_STALL,         /* reads a request head, never answers */
    F_CLOSE_AFTER,   /* answers "ok\n", then closes without saying so (no Connection: close) */
    F_DIE_ON_SECOND, /* answers a connection's first request, closes on reading its second */
    F_BIG_HEAD,      /* answers "ok\n" with a head of PAD_LEN bytes and more */
    F_RAW,           /* answers each request with the bytes of fake.raw, whatever they are */
    F_LONG,          /* answers LONG_BODY bytes, the last after SETTLE ms (see fake_long_answer) */
};

#define FAKE_CONNS    256
#define FAKE_BUF_MAX  (8 << 20)
#define FAKE_POLL_MS  20
#define HALF_ANNOUNCE 100000 /* F_HALF's Content-Length; it sends half */
#define PAD_LEN       6000   /* F_BIG_HEAD's X-Pad value: a head over 4 KiB, under 8 KiB */
#define LONG_BODY     65536  /* F_LONG's answers: long enough for the proxy to call them long */

struct fake;

struct fake_conn {
    struct fake *f;
    int fd;
    pthread_t th;
};

struct fake {
    enum fake_mode mode;
    int lfd, port;
    int stop;
    pthread_t acceptor;
    int nconns; /* accepted, each with a thread in conns[] */
    struct fake_conn conns[FAKE_CONNS];
    /* Counters, updated atomically by the threads. */
    long bytes;      /* received */
    int requests;    /* request heads received */
    int posts;       /* of them, POSTs */
    int bodies;      /* requests received whole, head and body */
    int open;        /* connections open now */
    int bad;         /* what the proxy sent did not parse, or too many connections */
    int early;       /* F_LONG: requests that came before the answer ahead of them was sent */
    const char *raw; /* F_RAW's answer, set by the test (atomically) */
};

static int ld(int *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void inc(int *p, int by)
{
    __atomic_add_fetch(p, by, __ATOMIC_ACQ_REL);
}

/* Read more into *buf at len (growing it), within FAKE_POLL_MS steps so
 * that a stop is seen. Returns the count, 0 at EOF, a reset or a stop, or
 * a negative errno. */
static ssize_t fake_read(struct fake *f, int fd, char **buf, size_t *cap, size_t len)
{
    if (len == *cap) {
        if (*cap >= FAKE_BUF_MAX)
            return -ENOBUFS;
        char *p = realloc(*buf, *cap * 2);
        if (!p)
            return -ENOMEM;
        *buf = p;
        *cap *= 2;
    }
    while (!ld(&f->stop)) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, FAKE_POLL_MS) <= 0)
            continue;
        ssize_t n = read(fd, *buf + len, *cap - len);
        if (n > 0)
            __atomic_add_fetch(&f->bytes, (long)n, __ATOMIC_ACQ_REL);
        if (n >= 0)
            return n;
        if (errno == ECONNRESET)
            return 0;
        if (errno != EINTR && errno != EAGAIN)
            return -errno;
    }
    return 0;
}

/* Send all of p[0..n) without blocking for more than FAKE_POLL_MS at a
 * time, so that a proxy that stops reading can't hold up a stop. */
static int fake_send(struct fake *f, int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0 && !ld(&f->stop)) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        if (poll(&pf, 1, FAKE_POLL_MS) <= 0)
            continue;
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EINTR && errno != EAGAIN)
            return -errno;
        if (w > 0)
            c += w, n -= (size_t)w;
    }
    return n == 0 ? 0 : -ECANCELED;
}

/* The body F_CHUNKED answers: every byte value, CR, LF and '0' among them,
 * in chunks of awkward sizes. */
static const size_t chunk_sizes[] = {1, 15, 16, 4095, 65536, 3, 100000};
#define CHUNKED_TOTAL (1 + 15 + 16 + 4095 + 65536 + 3 + 100000)

static unsigned char chunk_byte(size_t i)
{
    return (unsigned char)((i * 31 + 7) & 0xff);
}

static int send_chunked_answer(struct fake *f, int fd)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    int rc = fake_send(f, fd, head, strlen(head));
    size_t at = 0;
    for (size_t k = 0; rc == 0 && k < sizeof chunk_sizes / sizeof chunk_sizes[0]; k++) {
        char line[64], *data = malloc(chunk_sizes[k]);
        if (!data)
            return -ENOMEM;
        for (size_t i = 0; i < chunk_sizes[k]; i++)
            data[i] = (char)chunk_byte(at + i);
        at += chunk_sizes[k];
        /* One size line with an extension, as an upstream may send. */
        int n = snprintf(line, sizeof line, k == 2 ? "%zx;ext=1\r\n" : "%zx\r\n", chunk_sizes[k]);
        rc = fake_send(f, fd, line, (size_t)n);
        if (rc == 0)
            rc = fake_send(f, fd, data, chunk_sizes[k]);
        if (rc == 0)
            rc = fake_send(f, fd, "\r\n", 2);
        free(data);
    }
    /* The last chunk, a trailer field, the end. */
    return rc ? rc : fake_send(f, fd, "0\r\nX-Trailer: t\r\n\r\n", 19);
}

/* Answer one request whose head is buf[0..hl) and decoded body follows it
 * (body bytes), as the mode says. */
static int fake_answer(struct fake *f, int fd, const char *buf, size_t hl, size_t body)
{
    char head[128];
    if (f->mode == F_CHUNKED)
        return send_chunked_answer(f, fd);
    if (f->mode == F_RAW) {
        const char *raw = __atomic_load_n(&f->raw, __ATOMIC_ACQUIRE);
        return fake_send(f, fd, raw, strlen(raw));
    }
    if (f->mode == F_BIG_HEAD) {
        static char big[PAD_LEN + 128];
        int n = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Pad: ");
        memset(big + n, 'p', PAD_LEN);
        memcpy(big + n + PAD_LEN, "\r\n\r\nok\n", 7);
        return fake_send(f, fd, big, (size_t)n + PAD_LEN + 7);
    }
    if (f->mode != F_ECHO) {
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        return fake_send(f, fd, ok, strlen(ok));
    }
    int n =
        snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", hl + body);
    int rc = fake_send(f, fd, head, (size_t)n);
    return rc ? rc : fake_send(f, fd, buf, hl + body);
}

/* F_LONG's answer to a request, rest bytes of buf having come after it:
 * LONG_BODY bytes, the last held back for SETTLE ms. A request behind this
 * one that came before that byte was sent on while this answer was not
 * in: it counts in early. */
static int fake_long_answer(struct fake *f, int fd, size_t rest)
{
    char head[96], *body = malloc(LONG_BODY);
    int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", LONG_BODY);
    if (!body)
        return -ENOMEM;
    memset(body, 'l', LONG_BODY);
    int rc = fake_send(f, fd, head, (size_t)n);
    rc = rc ? rc : fake_send(f, fd, body, LONG_BODY - 1);
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (rc == 0 && (rest > 0 || poll(&pf, 1, SETTLE) > 0))
        inc(&f->early, 1);
    rc = rc ? rc : fake_send(f, fd, body + LONG_BODY - 1, 1);
    free(body);
    return rc;
}

/* Read on until the proxy closes or the fake stops, dropping what comes. */
static void fake_drain(struct fake *f, int fd, char **buf, size_t *cap)
{
    while (fake_read(f, fd, buf, cap, 0) > 0) {
    }
}

static void *fake_conn_main(void *arg)
{
    struct fake_conn *c = arg;
    struct fake *f = c->f;
    int fd = c->fd, served = 0;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    http_request_t req;
    while (buf) {
        int hl = http_parse_request(buf, len, 4 * HTTP_MAX_HEAD, &req);
        if (hl == HTTP_PARTIAL) {
            ssize_t n = fake_read(f, fd, &buf, &cap, len);
            if (n <= 0)
                break;
            len += (size_t)n;
            continue;
        }
        if (hl < 0) {
            inc(&f->bad, 1);
            break;
        }
        inc(&f->requests, 1);
        if (req.method_len == 4 && memcmp(req.method, "POST", 4) == 0)
            inc(&f->posts, 1);
        if (f->mode == F_RESET) {
            tconn_reset(fd);
            fd = -1;
            break;
        }
        if (f->mode == F_HALF) {
            char head[96], *half = malloc(HALF_ANNOUNCE / 2);
            int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n",
                             HALF_ANNOUNCE);
            if (half) {
                memset(half, 'h', HALF_ANNOUNCE / 2);
                if (fake_send(f, fd, head, (size_t)n) == 0)
                    (void)fake_send(f, fd, half, HALF_ANNOUNCE / 2); /* then the close */
                free(half);
            }
            break;
        }
        if (f->mode == F_STALL) {
            fake_drain(f, fd, &buf, &cap);
            break;
        }
        if (f->mode == F_DIE_ON_SECOND && served > 0)
            break;
        int64_t cl;
        int chunked;
        if (http_body_framing(req.headers, req.num_headers, &cl, &chunked) != 0) {
            inc(&f->bad, 1);
            break;
        }
        /* req points into buf, which the reads below may move: only hl,
         * cl and chunked are used from here. */
        size_t body = 0, raw = 0;
        int whole = 1;
        if (chunked) {
            http_chunked_t d = {0};
            int r;
            while ((r = http_decode_chunked(&d, buf + hl, len - (size_t)hl, FAKE_BUF_MAX)) == 0) {
                ssize_t n = fake_read(f, fd, &buf, &cap, len);
                if (n <= 0) {
                    whole = 0;
                    break;
                }
                len += (size_t)n;
            }
            if (whole && r < 0) {
                inc(&f->bad, 1);
                whole = 0;
            }
            body = d.dst, raw = d.src;
        } else if (cl > 0) {
            while (whole && len - (size_t)hl < (size_t)cl) {
                ssize_t n = fake_read(f, fd, &buf, &cap, len);
                if (n <= 0)
                    whole = 0;
                else
                    len += (size_t)n;
            }
            body = raw = (size_t)cl;
        }
        if (!whole)
            break;
        inc(&f->bodies, 1);
        if ((f->mode == F_LONG ? fake_long_answer(f, fd, len - (size_t)hl - raw)
                               : fake_answer(f, fd, buf, (size_t)hl, body)) < 0)
            break;
        served++;
        len -= (size_t)hl + raw;
        memmove(buf, buf + hl + raw, len);
        if (f->mode == F_CLOSE_AFTER)
            break;
    }
    free(buf);
    if (fd >= 0)
        close(fd);
    inc(&f->open, -1);
    return NULL;
}

static void *fake_accept_main(void *arg)
{
    struct fake *f = arg;
    while (!ld(&f->stop)) {
        struct pollfd pf = {.fd = f->lfd, .events = POLLIN};
        if (poll(&pf, 1, FAKE_POLL_MS) <= 0)
            continue;
        int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        if (f->nconns == FAKE_CONNS) {
            inc(&f->bad, 1);
            close(fd);
            continue;
        }
        struct fake_conn *c = &f->conns[f->nconns];
        c->f = f;
        c->fd = fd;
        inc(&f->open, 1);
        if (pthread_create(&c->th, NULL, fake_conn_main, c) != 0) {
            inc(&f->open, -1);
            inc(&f->bad, 1);
            close(fd);
            continue;
        }
        __atomic_store_n(&f->nconns, f->nconns + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* A listening socket on 127.0.0.1 and a free port. Returns the fd. */
static int listen_free(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 128), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static struct fake *fake_start(enum fake_mode mode)
{
    struct fake *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->mode = mode;
    f->lfd = listen_free(&f->port);
    assert_int_equal(pthread_create(&f->acceptor, NULL, fake_accept_main, f), 0);
    return f;
}

/* Stop the threads (each sees the stop within FAKE_POLL_MS) and free. */
static void fake_stop(struct fake *f)
{
    if (!f)
        return;
    __atomic_store_n(&f->stop, 1, __ATOMIC_RELEASE);
    pthread_join(f->acceptor, NULL);
    for (int i = 0; i < f->nconns; i++)
        pthread_join(f->conns[i].th, NULL);
    close(f->lfd);
    free(f);
}

/* ---- the processes of a test ---- */

struct px {
    pid_t pid; /* the proxy */
    int port;
    pid_t up_pid; /* server-epoll, when the upstream is real */
    int up_port;
    struct fake *fake;
    char label[48]; /* upstream="127.0.0.1:PORT", as /metrics labels the upstream */
};

static int setup(void **state)
{
    static struct px s;
    memset(&s, 0, sizeof s);
    *state = &s;
    return 0;
}

static int teardown(void **state)
{
    struct px *s = *state;
    int st = 0, up = 0;
    if (s->pid > 0)
        st = tproc_stop(s->pid, STOP_MS);
    if (s->up_pid > 0)
        up = tproc_stop(s->up_pid, STOP_MS);
    fake_stop(s->fake);
    tproc_stop_all(STOP_MS); /* anything a failed test left */
    memset(s, 0, sizeof *s);
    if (st != 0 || up != 0) {
        print_error("SIGTERM gave exit status %d (proxy), %d (upstream), want 0\n", st, up);
        return -1;
    }
    return 0;
}

/* The test's state, or skip when the proxy (or the upstream) is not built. */
static struct px *px(void **state)
{
    if (!tproc_exists("server-proxy") || !tproc_exists("server-epoll"))
        skip();
    return *state;
}

static void start_epoll(struct px *s)
{
    const char *argv[] = {tproc_bin("server-epoll"), "--port", "0", NULL};
    s->up_pid = tproc_start(argv, &s->up_port);
    if (s->up_pid < 0)
        fail_msg("server-epoll did not start: %s", strerror(-s->up_pid));
}

/* Start the proxy in front of 127.0.0.1:upstream_port with the flags that
 * follow (NULL-terminated). */
static void start_proxy(struct px *s, int upstream_port, ...)
{
    char up[32];
    const char *argv[32];
    int n = 0;
    snprintf(up, sizeof up, "127.0.0.1:%d", upstream_port);
    snprintf(s->label, sizeof s->label, "upstream=\"%s\"", up);
    argv[n++] = tproc_bin("server-proxy");
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--upstream";
    argv[n++] = up;
    va_list ap;
    va_start(ap, upstream_port);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && n < 31;)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    s->pid = tproc_start(argv, &s->port);
    if (s->pid < 0)
        fail_msg("server-proxy did not start: %s", strerror(-s->pid));
}

/* server-epoll and the proxy in front of it. */
static void start_real(struct px *s, const char *threads)
{
    start_epoll(s);
    start_proxy(s, s->up_port, "--threads", threads, NULL);
}

/* A fake upstream in this mode and the proxy in front of it, with the
 * flags that follow (NULL-terminated, at most four). */
static void start_fake(struct px *s, enum fake_mode mode, const char *a1, const char *a2,
                       const char *a3, const char *a4)
{
    s->fake = fake_start(mode);
    start_proxy(s, s->fake->port, "--threads", "1", a1, a2, a3, a4, NULL);
}

/* ---- the client's side ---- */

static void send_str(int fd, const char *p)
{
    int rc = tconn_sends(fd, p);
    if (rc < 0)
        fail_msg("send: %s", strerror(-rc));
}

/* The length of req's first line, for messages: "%.*s", LINE(req). */
#define LINE(req) (int)strcspn(req, "\r\n"), req

/* Send req, read one response (thttp: Content-Length framing), check its
 * status and (if not NULL) its body. */
static void http_expect(int fd, const char *req, int status, const char *body)
{
    thttp_resp_t r = {0};
    int rc = thttp_do(fd, req, &r, T);
    if (rc < 0)
        fail_msg("%.*s: no response (%s); head: %.300s", LINE(req), strerror(-rc), r.head);
    if (r.status != status || (body && strcmp(r.body, body) != 0)) {
        char got[200];
        snprintf(got, sizeof got, "%s", r.body);
        thttp_free(&r);
        fail_msg("%.*s: got %d \"%s\", want %d \"%s\"", LINE(req), r.status, got, status,
                 body ? body : "*");
    }
    thttp_free(&r);
}

/* One request on a connection of its own: the status (or a negative errno). */
static int ask_status(int port, const char *req)
{
    thttp_resp_t r = {0};
    int fd = tconn_must(port);
    int rc = thttp_do(fd, req, &r, T);
    thttp_free(&r);
    close(fd);
    return rc < 0 ? rc : r.status;
}

/* Read a response head byte by byte into head (NUL-terminated), so nothing
 * after it is consumed. Its length, -EPIPE, -ETIMEDOUT or -ENOBUFS. */
static ssize_t read_head(int fd, char *head, size_t cap, int timeout_ms)
{
    long long deadline = tnow_ms() + timeout_ms;
    size_t len = 0;
    head[0] = '\0';
    while (len < 4 || memcmp(head + len - 4, "\r\n\r\n", 4) != 0) {
        if (len + 1 >= cap)
            return -ENOBUFS;
        ssize_t r = tconn_read_some(fd, head + len, 1, deadline);
        if (r <= 0)
            return r == 0 ? -EPIPE : r;
        head[++len] = '\0';
    }
    return (ssize_t)len;
}

/* Read one response with a chunked body: its head into head, its decoded
 * body (malloc'd) into *body. Returns the status, -EPROTO when it is not
 * chunked or the chunks don't parse, -EPIPE, -ETIMEDOUT. Reads nothing past
 * the end: nothing else was asked for, so anything there is an error. */
static int read_chunked(int fd, char *head, size_t hcap, char **body, size_t *blen)
{
    long long deadline = tnow_ms() + T;
    http_response_t res;
    *body = NULL;
    ssize_t hl = read_head(fd, head, hcap, T);
    if (hl < 0)
        return (int)hl;
    int64_t cl;
    int chunked = 0;
    if (http_parse_response(head, (size_t)hl, hcap, &res) != hl ||
        http_body_framing(res.headers, res.num_headers, &cl, &chunked) != 0 || !chunked)
        return -EPROTO;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    http_chunked_t d = {0};
    int r;
    while (b && (r = http_decode_chunked(&d, b, len, 1 << 28)) == 0) {
        if (len == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb)
                break;
            b = nb;
        }
        ssize_t n = tconn_read_some(fd, b + len, cap - len, deadline);
        if (n <= 0) {
            free(b);
            return n == 0 ? -EPIPE : (int)n;
        }
        len += (size_t)n;
    }
    if (!b || r != 1 || d.src != len) {
        free(b);
        return -EPROTO;
    }
    *body = b;
    *blen = d.dst;
    return res.status;
}

/* Does buf[0..len) hold a whole response (head and all its body)? A head
 * without framing is whole too: its body ends at the close, so a client
 * can't tell it short. */
static int whole_response(const char *buf, size_t len)
{
    http_response_t res;
    int hl = http_parse_response(buf, len, len + 1, &res);
    if (hl < 0)
        return 0;
    int64_t cl;
    int chunked;
    if (http_body_framing(res.headers, res.num_headers, &cl, &chunked) != 0)
        return 0;
    if (chunked) {
        char *copy = malloc(len - (size_t)hl + 1);
        http_chunked_t d = {0};
        assert_non_null(copy);
        memcpy(copy, buf + hl, len - (size_t)hl);
        int r = http_decode_chunked(&d, copy, len - (size_t)hl, SIZE_MAX);
        free(copy);
        return r == 1;
    }
    return cl < 0 || len - (size_t)hl >= (size_t)cl;
}

/* ---- what the proxy reports ---- */

/* GET /metrics on a connection of its own: the body (malloc'd). */
static char *metrics_fetch(const struct px *s)
{
    thttp_resp_t r = {0};
    int fd = tconn_must(s->port);
    int rc = thttp_do(fd, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", &r, T);
    close(fd);
    if (rc < 0 || r.status != 200)
        fail_msg("GET /metrics: %d (%s)", r.status, rc < 0 ? strerror(-rc) : "status");
    return r.body;
}

/* The sum of the samples of metric `name` (lines "name{labels} v" or
 * "name v") whose labels contain l1 and l2 (each NULL: any); 0 if none. */
static double msum(const char *body, const char *name, const char *l1, const char *l2)
{
    size_t n = strlen(name);
    double sum = 0;
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) != 0 || (p[n] != '{' && p[n] != ' '))
            continue;
        const char *end = strchr(p, '\n'), *v = p + n;
        if (p[n] == '{') {
            const char *close = strchr(p, '}');
            if (!close || (end && close > end))
                continue;
            size_t ll = (size_t)(close - p);
            char labels[512];
            snprintf(labels, sizeof labels, "%.*s", (int)ll, p);
            if ((l1 && !strstr(labels, l1)) || (l2 && !strstr(labels, l2)))
                continue;
            v = close + 1;
        }
        sum += strtod(v, NULL);
    }
    return sum;
}

/* One figure of the proxy for its upstream, read now. */
static double metric(const struct px *s, const char *name)
{
    char *body = metrics_fetch(s);
    double v = msum(body, name, s->label, NULL);
    free(body);
    return v;
}

/* The proxy's lines of /metrics, for a failure's message. */
static void print_proxy_metrics(const struct px *s)
{
    char *body = metrics_fetch(s);
    for (char *line = strtok(body, "\n"); line; line = strtok(NULL, "\n"))
        if (strncmp(line, "proxy_", 6) == 0)
            print_message("  %s\n", line);
    free(body);
}

/* Wait up to ms for metric `name` to be at most `max`; its last value. */
static double wait_metric_le(const struct px *s, const char *name, double max, int ms)
{
    long long end = tnow_ms() + ms;
    double v;
    while ((v = metric(s, name)) > max && tnow_ms() < end)
        tsleep_ms(20);
    return v;
}

/* Descriptors open in pid. */
static int fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    int n = 0;
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* VmRSS of pid in kB, or -1. */
static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* ---- through the proxy to server-epoll ---- */

static void test_routes_and_keepalive(void **state)
{
    struct px *s = px(state);
    start_real(s, "2");
    int fd = tconn_must(s->port);
    /* Twenty rounds on one connection: it stays open between them. */
    for (int i = 0; i < 20; i++) {
        http_expect(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, HELLO_BODY);
        http_expect(fd, "GET /ping HTTP/1.1\r\nHost: t\r\n\r\n", 200, "PONG\n");
    }
    http_expect(fd, "GET /burn?n=3 HTTP/1.1\r\nHost: t\r\n\r\n", 200,
                "RESULT 11166244414315200793\n");
    long long t0 = tnow_ms();
    http_expect(fd, "GET /wait?ms=100 HTTP/1.1\r\nHost: t\r\n\r\n", 200, "DONE\n");
    if (tnow_ms() - t0 < 95)
        fail_msg("/wait?ms=100 answered after %lld ms", tnow_ms() - t0);
    /* The upstream's errors come through as they are. */
    http_expect(fd, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404, NULL);
    http_expect(fd, "DELETE / HTTP/1.1\r\nHost: t\r\n\r\n", 405, NULL);
    http_expect(fd, "GET /wait?ms=abc HTTP/1.1\r\nHost: t\r\n\r\n", 400, NULL);
    /* A request byte by byte. */
    const char *req = "GET /burn?n=1000 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n";
    for (const char *p = req; *p; p++) {
        assert_int_equal(tconn_send(fd, p, 1), 0);
        tsleep_ms(1);
    }
    thttp_resp_t r = {0};
    assert_int_equal(thttp_read(fd, &r, 0, T), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "RESULT 902429759771004424\n");
    thttp_free(&r);
    http_expect(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, HELLO_BODY);
    close(fd);
}

static void test_head(void **state)
{
    struct px *s = px(state);
    start_real(s, "2");
    int fd = tconn_must(s->port);
    thttp_resp_t r = {0};
    assert_int_equal(thttp_do(fd, "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", &r, T), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.content_length, 13);
    thttp_free(&r);
    assert_int_equal(thttp_do(fd, "HEAD /stream?n=100 HTTP/1.1\r\nHost: t\r\n\r\n", &r, T), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.content_length, 100);
    thttp_free(&r);
    /* No body followed either head: the next answer comes out clean. */
    http_expect(fd, "GET /ping HTTP/1.1\r\nHost: t\r\n\r\n", 200, "PONG\n");
    tsleep_ms(50);
    assert_int_equal(tconn_pending(fd), 0);
    close(fd);
}

/* GET /stream?n=N from server-epoll directly and through the proxy (started
 * with `flag`, or NULL): the same status and the same bytes, whole. Returns
 * the body bytes the proxy spliced meanwhile. */
static double stream_bodies(struct px *s, const char *flag)
{
    start_epoll(s);
    start_proxy(s, s->up_port, "--threads", "2", flag, NULL);
    static const size_t sizes[] = {0, 1024, 65536, 1 << 20};
    double spliced0 = metric(s, "proxy_upstream_spliced_bytes_total");
    int direct = tconn_must(s->up_port), via = tconn_must(s->port);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char req[128];
        snprintf(req, sizeof req, "GET /stream?n=%zu HTTP/1.1\r\nHost: t\r\n\r\n", sizes[i]);
        thttp_resp_t a, b;
        assert_int_equal(thttp_do(direct, req, &a, T), 0);
        int rc = thttp_do(via, req, &b, T);
        if (rc < 0)
            fail_msg("%zu bytes through the proxy: %s (%zu of the body came)", sizes[i],
                     strerror(-rc), b.body_len);
        assert_int_equal(b.status, a.status);
        assert_int_equal(b.body_len, sizes[i]);
        assert_int_equal(a.body_len, sizes[i]);
        if (memcmp(a.body, b.body, sizes[i]) != 0)
            fail_msg("%zu bytes through the proxy differ from the upstream's", sizes[i]);
        thttp_free(&a);
        thttp_free(&b);
    }
    close(direct);
    close(via);
    return metric(s, "proxy_upstream_spliced_bytes_total") - spliced0;
}

/* By default long bodies are copied: nothing goes by a pipe (splicing from
 * a near upstream costs it and the client more than the proxy saves, see
 * relay.c's splice_pays). */
static void test_stream_bodies(void **state)
{
    double spliced = stream_bodies(px(state), NULL);
    if (spliced != 0)
        fail_msg("%.0f body bytes went by splice without --splice, want none", spliced);
}

/* --splice: the long bodies go by the pipe, not through the proxy's
 * buffers: all of them but what came with their heads. */
static void test_stream_bodies_spliced(void **state)
{
    double spliced = stream_bodies(px(state), "--splice");
    print_message("spliced: %.0f of %d body bytes\n", spliced, 65536 + (1 << 20));
    if (spliced < (1 << 20) - 65536 || spliced > 65536 + (1 << 20))
        fail_msg("%.0f body bytes went by splice, want most of the 1 MiB and 64 KiB bodies",
                 spliced);
}

/* 50 requests in one write, / and /stream of sizes that tell them apart:
 * answered in order. Then 1000 hellos in one write. */
static void test_pipelined(void **state)
{
    struct px *s = px(state);
    start_real(s, "2");
    enum { N = 50, MANY = 1000 };
    char *batch = malloc(N * 64);
    size_t len = 0;
    assert_non_null(batch);
    for (int i = 0; i < N; i++)
        len += (size_t)(i % 2 ? sprintf(batch + len, "GET /stream?n=%d HTTP/1.1\r\nHost: t\r\n\r\n",
                                        i * 997)
                              : sprintf(batch + len, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
    int fd = tconn_must(s->port);
    assert_int_equal(tconn_send(fd, batch, len), 0);
    free(batch);
    for (int i = 0; i < N; i++) {
        thttp_resp_t r = {0};
        int rc = thttp_read(fd, &r, 0, T);
        if (rc < 0)
            fail_msg("pipelined answer %d of %d: %s", i, N, strerror(-rc));
        assert_int_equal(r.status, 200);
        if (i % 2 == 0 && strcmp(r.body, HELLO_BODY) != 0)
            fail_msg("pipelined answer %d: \"%.40s\", want hello", i, r.body);
        if (i % 2 == 1 && r.body_len != (size_t)i * 997)
            fail_msg("pipelined answer %d: %zu bytes, want %d (out of order?)", i, r.body_len,
                     i * 997);
        thttp_free(&r);
    }
    char *many = tconn_batch("GET / HTTP/1.1\r\nHost: t\r\n\r\n", MANY, "", &len);
    assert_int_equal(tconn_send(fd, many, len), 0);
    free(many);
    for (int i = 0; i < MANY; i++) {
        thttp_resp_t r = {0};
        int rc = thttp_read(fd, &r, 0, T);
        if (rc < 0 || r.status != 200 || strcmp(r.body, HELLO_BODY) != 0)
            fail_msg("hello %d of %d in one write: %d %s", i, MANY, r.status,
                     rc < 0 ? strerror(-rc) : r.body);
        thttp_free(&r);
    }
    close(fd);
}

static void test_http10_and_close(void **state)
{
    struct px *s = px(state);
    start_real(s, "2");
    thttp_resp_t r = {0};
    /* HTTP/1.0: closed after the answer unless keep-alive is asked for. */
    int fd = tconn_must(s->port);
    assert_int_equal(thttp_do(fd, "GET / HTTP/1.0\r\n\r\n", &r, T), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, HELLO_BODY);
    thttp_free(&r);
    if (!tconn_closed(fd, T))
        fail_msg("an HTTP/1.0 request without keep-alive: the connection stayed open");
    close(fd);

    fd = tconn_must(s->port);
    assert_int_equal(thttp_do(fd, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r, T), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, HELLO_BODY);
    if (!thttp_has_header(&r, "Connection: keep-alive"))
        fail_msg("HTTP/1.0 keep-alive: the answer does not say keep-alive: %s", r.head);
    thttp_free(&r);
    http_expect(fd, "GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, "PONG\n");
    http_expect(fd, "GET /ping HTTP/1.1\r\nHost: t\r\n\r\n", 200, "PONG\n");
    close(fd);

    /* HTTP/1.1 Connection: close, with a request after it that must not
     * be answered. */
    fd = tconn_must(s->port);
    assert_int_equal(thttp_do(fd,
                              "GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                              "GET /ping HTTP/1.1\r\nHost: t\r\n\r\n",
                              &r, T),
                     0);
    assert_int_equal(r.status, 200);
    assert_true(thttp_has_header(&r, "Connection: close"));
    thttp_free(&r);
    char rest[256];
    assert_int_equal(tconn_recv_eof(fd, rest, sizeof rest, T), 0);
    close(fd);
}

/* ---- what reaches the upstream (a fake that echoes it) ---- */

/* Send req through the proxy to an F_ECHO fake; parse the head the fake
 * received into *got (pointing into the returned malloc'd buffer, which
 * also holds the body after it: *body, *blen). */
static char *echoed(int fd, const char *req, size_t req_len, http_request_t *got, char **body,
                    size_t *blen)
{
    thttp_resp_t r = {0};
    assert_int_equal(tconn_send(fd, req, req_len), 0);
    int rc = thttp_read(fd, &r, 0, T);
    if (rc < 0 || r.status != 200)
        fail_msg("%.*s (%zu bytes): %d (%s)", LINE(req), req_len, r.status,
                 rc < 0 ? strerror(-rc) : r.body);
    int hl = http_parse_request(r.body, r.body_len, r.body_len + 1, got);
    if (hl < 0)
        fail_msg("what reached the upstream does not parse (%d): %.300s", hl, r.body);
    *body = r.body + hl;
    *blen = r.body_len - (size_t)hl;
    return r.body;
}

/* The values of every header named `name`, joined with ", " into out. */
static const char *joined(const http_request_t *q, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    for (size_t i = 0; i < q->num_headers; i++) {
        const http_header_t *h = &q->headers[i];
        if (h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0)
            snprintf(out + strlen(out), cap - strlen(out), "%s%.*s", out[0] ? ", " : "",
                     (int)h->value_len, h->value);
    }
    return out;
}

static void test_forwarded_headers(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_ECHO, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    http_request_t q;
    char *body, v[512];
    size_t blen;
    const char *req = "GET /some/path?a=1&b=2 HTTP/1.1\r\nHost: t\r\n"
                      "Connection: foo, keep-alive\r\nFoo: bar\r\nKeep-Alive: timeout=5\r\n"
                      "TE: deflate\r\nUpgrade: foo/1\r\nProxy-Connection: keep-alive\r\n"
                      "X-End-To-End: yes\r\n\r\n";
    char *got = echoed(fd, req, strlen(req), &q, &body, &blen);
    if (q.method_len != 3 || memcmp(q.method, "GET", 3) != 0 || q.path_len != 10 ||
        memcmp(q.path, "/some/path", 10) != 0 || !q.query || q.query_len != 7 ||
        memcmp(q.query, "a=1&b=2", 7) != 0)
        fail_msg("the request line did not arrive as sent: %.200s", got);
    if (!strstr(joined(&q, "Via", v, sizeof v), "server-proxy"))
        fail_msg("no Via naming server-proxy upstream (\"%s\"): %.600s", v, got);
    if (strcmp(joined(&q, "X-Forwarded-For", v, sizeof v), "127.0.0.1") != 0)
        fail_msg("X-Forwarded-For \"%s\", want \"127.0.0.1\": %.600s", v, got);
    if (strcmp(joined(&q, "X-End-To-End", v, sizeof v), "yes") != 0)
        fail_msg("an end-to-end header was not forwarded: %.600s", got);
    static const char *const hop[] = {"Foo", "Keep-Alive", "Upgrade", "Proxy-Connection"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (joined(&q, hop[i], v, sizeof v)[0])
            fail_msg("hop-by-hop %s: %s forwarded: %.600s", hop[i], v, got);
    /* The proxy may ask for trailers itself (TE: trailers), never pass the
     * client's TE on; and its own Connection may say keep-alive, never foo. */
    if (strstr(joined(&q, "TE", v, sizeof v), "deflate"))
        fail_msg("the client's TE was forwarded: %.600s", got);
    joined(&q, "Connection", v, sizeof v);
    if (http_has_token(v, strlen(v), "foo"))
        fail_msg("the client's Connection was forwarded: %.600s", got);
    free(got);

    /* A client's own X-Forwarded-For is kept, this hop added after it. */
    req = "GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n";
    got = echoed(fd, req, strlen(req), &q, &body, &blen);
    if (strcmp(joined(&q, "X-Forwarded-For", v, sizeof v), "10.1.2.3, 127.0.0.1") != 0)
        fail_msg("X-Forwarded-For \"%s\", want \"10.1.2.3, 127.0.0.1\": %.600s", v, got);
    free(got);

    /* An absolute-form target goes as origin-form, and its authority as
     * the one Host, whatever Host came with it (RFC 9112 3.2.2). */
    req = "GET http://other.example:8080/p?q=1 HTTP/1.1\r\nHost: t\r\n\r\n";
    got = echoed(fd, req, strlen(req), &q, &body, &blen);
    if (q.authority || q.path_len != 2 || memcmp(q.path, "/p", 2) != 0)
        fail_msg("absolute-form went upstream as %.80s", got);
    if (strcmp(joined(&q, "Host", v, sizeof v), "other.example:8080") != 0)
        fail_msg("absolute-form: Host \"%s\" upstream, want \"other.example:8080\": %.300s", v,
                 got);
    free(got);
    /* A target with userinfo is refused, not forwarded (RFC 9110 4.2.4). */
    int asked = ld(&s->fake->requests);
    http_expect(fd, "GET http://u@other.example/ HTTP/1.1\r\nHost: t\r\n\r\n", 400, NULL);
    assert_int_equal(ld(&s->fake->requests), asked);
    close(fd);
}

/* A body of n bytes no two neighbours alike, CR, LF and NUL among them. */
static char *pattern(size_t n)
{
    char *p = malloc(n);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)((i * 7 + i / 251) & 0xff);
    return p;
}

static void test_request_bodies(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_ECHO, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    http_request_t q;
    char *body, *got, head[256];
    size_t blen;
    /* Content-Length: 0, 1 KiB and 300 KB. */
    static const size_t sizes[] = {0, 1024, 300000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        int hl = snprintf(head, sizeof head,
                          "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", n);
        char *req = malloc((size_t)hl + n + 1), *data = pattern(n);
        assert_non_null(req);
        memcpy(req, head, (size_t)hl);
        memcpy(req + hl, data, n);
        got = echoed(fd, req, (size_t)hl + n, &q, &body, &blen);
        if (blen != n || memcmp(body, data, n) != 0)
            fail_msg("a %zu-byte body arrived as %zu bytes%s", n, blen,
                     blen == n ? ", different" : "");
        free(got);
        free(req);
        free(data);
    }
    /* Chunked, in chunks of 1, 100, 65536 and 200000 bytes: the same bytes
     * arrive, however the proxy frames them. */
    static const size_t chunks[] = {1, 100, 65536, 200000};
    size_t total = 0, len = 0;
    for (size_t k = 0; k < 4; k++)
        total += chunks[k];
    char *data = pattern(total), *req = malloc(total + 512);
    assert_non_null(req);
    len = (size_t)sprintf(req, "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
                               "\r\n\r\n");
    for (size_t k = 0, at = 0; k < 4; at += chunks[k], k++) {
        len += (size_t)sprintf(req + len, "%zx\r\n", chunks[k]);
        memcpy(req + len, data + at, chunks[k]);
        len += chunks[k];
        len += (size_t)sprintf(req + len, "\r\n");
    }
    len += (size_t)sprintf(req + len, "0\r\n\r\n");
    got = echoed(fd, req, len, &q, &body, &blen);
    if (blen != total || memcmp(body, data, total) != 0)
        fail_msg("a chunked body of %zu bytes arrived as %zu bytes%s", total, blen,
                 blen == total ? ", different" : "");
    free(got);
    free(req);
    free(data);
    /* Still in step. */
    const char *get = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    got = echoed(fd, get, strlen(get), &q, &body, &blen);
    assert_int_equal(blen, 0);
    free(got);
    close(fd);
    assert_int_equal(ld(&s->fake->bad), 0);
}

/* An upstream's chunked answer reaches the client whole, and the
 * connection stays in step for the next one. */
static void test_chunked_response(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_CHUNKED, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    for (int round = 0; round < 3; round++) {
        char head[4096], *body;
        size_t blen = 0;
        send_str(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        int st = read_chunked(fd, head, sizeof head, &body, &blen);
        if (st != 200)
            fail_msg("chunked answer %d: %d (%s); head: %.300s", round, st,
                     st < 0 ? strerror(-st) : "status", head);
        assert_int_equal(blen, CHUNKED_TOTAL);
        for (size_t i = 0; i < blen; i++)
            if ((unsigned char)body[i] != chunk_byte(i))
                fail_msg("chunked answer %d: byte %zu is 0x%02x, want 0x%02x", round, i,
                         (unsigned char)body[i], chunk_byte(i));
        free(body);
    }
    close(fd);
}

/* Heads over 4 KiB (under the 8 KiB limit) both ways, as big cookies and
 * policies make them: a 7000-byte Cookie reaches the upstream intact, an
 * answer's 6000-byte field reaches the client intact. */
static void test_big_heads(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_ECHO, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    enum { COOKIE = 7000 };
    char *req = malloc(COOKIE + 128), *body, v[COOKIE + 16];
    assert_non_null(req);
    int n = sprintf(req, "GET / HTTP/1.1\r\nHost: t\r\nCookie: ");
    memset(req + n, 'c', COOKIE);
    strcpy(req + n + COOKIE, "\r\n\r\n");
    http_request_t q;
    size_t blen;
    for (int round = 0; round < 3; round++) {
        char *got = echoed(fd, req, strlen(req), &q, &body, &blen);
        if (strlen(joined(&q, "Cookie", v, sizeof v)) != COOKIE || strspn(v, "c") != COOKIE)
            fail_msg("round %d: a %d-byte Cookie arrived as %zu bytes", round, COOKIE, strlen(v));
        free(got);
    }
    free(req);
    close(fd);
    assert_int_equal(tproc_stop(s->pid, STOP_MS), 0);
    s->pid = 0;
    fake_stop(s->fake);
    s->fake = NULL;

    start_fake(s, F_BIG_HEAD, NULL, NULL, NULL, NULL);
    fd = tconn_must(s->port);
    for (int round = 0; round < 3; round++) {
        thttp_resp_t r = {0};
        int rc = thttp_do(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r, T);
        if (rc < 0)
            fail_msg("round %d: an answer with a %d-byte field: %s", round, PAD_LEN, strerror(-rc));
        const char *pad = strstr(r.head, "\r\nX-Pad: ");
        if (r.status != 200 || strcmp(r.body, "ok\n") != 0 || !pad ||
            strspn(pad + 9, "p") != PAD_LEN || strncmp(pad + 9 + PAD_LEN, "\r\n", 2) != 0)
            fail_msg("round %d: an answer with a %d-byte field came as %d, %zu bytes of head",
                     round, PAD_LEN, r.status, r.head_len);
        thttp_free(&r);
    }
    close(fd);
}

/* ---- smuggling shapes: rejected before anything goes upstream ---- */

/* Send a request the proxy must refuse: 4xx or 5xx, then a close. */
static void expect_refused(const struct px *s, const char *what, const char *req, size_t len)
{
    int fd = tconn_must(s->port);
    assert_int_equal(tconn_send(fd, req, len), 0);
    thttp_resp_t r = {0};
    int rc = thttp_read(fd, &r, 0, T);
    if (rc < 0)
        fail_msg("%s: no answer within %d ms (%s)", what, T, strerror(-rc));
    thttp_free(&r);
    if (r.status < 400 || r.status > 599)
        fail_msg("%s: status %d, want 4xx or 5xx", what, r.status);
    if (!tconn_closed(fd, T))
        fail_msg("%s: the connection stayed open after %d", what, r.status);
    close(fd);
}

/* The fake's open connections once it has settled: none open and none
 * waiting in its listening socket's queue, seen twice SETTLE ms apart (its
 * accept thread may be between its poll and its accept; on a busy machine a
 * connection the proxy made and closed may still wait there), or the count
 * after T ms. */
static int fake_open_settled(struct fake *f)
{
    long long end = tnow_ms() + T;
    int calm = 0;
    while (tnow_ms() < end) {
        struct pollfd pf = {.fd = f->lfd, .events = POLLIN};
        calm = ld(&f->open) == 0 && poll(&pf, 1, 0) == 0 ? calm + 1 : 0;
        if (calm == 2)
            return 0;
        tsleep_ms(calm ? SETTLE : 10);
    }
    return ld(&f->open);
}

static void test_smuggling_rejected(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_ECHO, NULL, NULL, NULL, NULL);
    static const struct {
        const char *what, *req;
    } bad[] = {
        {"Content-Length and Transfer-Encoding",
         "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n"},
        {"Transfer-Encoding and Content-Length",
         "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
         "0\r\n\r\n"},
        {"two Content-Lengths",
         "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"},
        {"obs-fold", "GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n"},
        {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: t\r\n\r\n"},
        {"HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n"},
        {"two Hosts", "GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n"},
        {"CONNECT", "CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_refused(s, bad[i].what, bad[i].req, strlen(bad[i].req));
    size_t n = 9000;
    char *big = malloc(n + 32);
    assert_non_null(big);
    memset(big, 'a', n);
    memcpy(big, "GET / HTTP/1.1\r\nHost: t\r\nX: ", 28);
    strcpy(big + n, "\r\n\r\n");
    expect_refused(s, "a header block of 9 KB", big, strlen(big));
    free(big);
    tsleep_ms(SETTLE);
    long bytes = __atomic_load_n(&s->fake->bytes, __ATOMIC_ACQUIRE);
    if (bytes != 0)
        fail_msg("the upstream received %ld bytes of rejected requests (%d heads, %d connections)",
                 bytes, ld(&s->fake->requests), ld(&s->fake->nconns));

    /* A bad chunk size comes after the head: a proxy that streams bodies
     * may have forwarded the head before it sees it, and then has no answer
     * to put in that request's place. What the client relies on: its
     * connection ends at once, with nothing or a refusal, never an answer
     * that looks like the upstream's; the upstream never gets a whole
     * request, and the connection that carried part of one is not kept. */
    const char *chunk = "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                        "0\r\n\r\n";
    int fd = tconn_must(s->port);
    assert_int_equal(tconn_sends(fd, chunk), 0);
    char got[1024];
    ssize_t cut = tconn_recv_eof(fd, got, sizeof got, T);
    close(fd);
    if (cut < 0)
        fail_msg("a bad chunk size: the connection was not closed within %d ms", T);
    if (cut > 0 && (strncmp(got, "HTTP/1.1 4", 10) != 0 && strncmp(got, "HTTP/1.1 5", 10) != 0))
        fail_msg("a bad chunk size: answered \"%.60s\", want a close, or 4xx or 5xx", got);
    int open = fake_open_settled(s->fake);
    print_message("a bad chunk size: %ld bytes reached the upstream, %d heads, %d connections\n",
                  (long)__atomic_load_n(&s->fake->bytes, __ATOMIC_ACQUIRE), ld(&s->fake->requests),
                  ld(&s->fake->nconns));
    assert_int_equal(ld(&s->fake->bodies), 0);
    if (open != 0)
        fail_msg("the upstream connection that carried a refused request stayed open");

    /* The premise: an ordinary request does reach this upstream. */
    assert_int_equal(ask_status(s->port, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    assert_int_equal(ld(&s->fake->bodies), 1);
}

/* ---- the upstream's faults ---- */

static void test_upstream_refused(void **state)
{
    struct px *s = px(state);
    /* A port nothing listens on: bound, then closed. */
    int port, lfd = listen_free(&port);
    close(lfd);
    start_proxy(s, port, "--threads", "1", NULL);
    int fd = tconn_must(s->port);
    http_expect(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 502, NULL);
    http_expect(fd, "GET /ping HTTP/1.1\r\nHost: t\r\n\r\n", 502, NULL);
    close(fd);
    double failed = metric(s, "proxy_upstream_connections_failed_total");
    if (failed < 2) {
        print_proxy_metrics(s);
        fail_msg("proxy_upstream_connections_failed_total %.0f after 2 refusals", failed);
    }
}

static void test_upstream_reset(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_RESET, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    http_expect(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 502, NULL);
    close(fd);
    assert_true(ld(&s->fake->requests) >= 1); /* the premise: the request reached it */
}

/* The upstream closes after half the body it announced, twenty times: its
 * close often comes in the same wake-up as its last bytes, which a reader
 * that stops at a short read can miss. */
static void test_upstream_truncated(void **state)
{
    struct px *s = px(state);
    enum { ROUNDS = 20 };
    start_fake(s, F_HALF, NULL, NULL, NULL, NULL);
    double before = metric(s, "proxy_upstream_truncated_total");
    static char buf[2 * HALF_ANNOUNCE];
    for (int i = 0; i < ROUNDS; i++) {
        int fd = tconn_must(s->port);
        send_str(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        ssize_t n = tconn_recv_eof(fd, buf, sizeof buf, T);
        size_t got = strlen(buf); /* no NUL in this answer */
        close(fd);
        if (n < 0)
            fail_msg("round %d: the client's connection was not closed within %d ms after the "
                     "upstream's close mid-body (%zu bytes came)",
                     i, T, got);
        if (whole_response(buf, (size_t)n))
            fail_msg("round %d: a whole answer (%zd bytes) from an upstream that sent half: %.200s",
                     i, n, buf);
    }
    assert_int_equal(ld(&s->fake->requests), ROUNDS);
    double after = metric(s, "proxy_upstream_truncated_total");
    if (after != before + ROUNDS) {
        print_proxy_metrics(s);
        fail_msg("proxy_upstream_truncated_total went from %.0f to %.0f, want +%d", before, after,
                 ROUNDS);
    }
}

/* Answers no upstream should send. A broken head or framing: 502, and the
 * connection is counted failed. Chunked framing broken after the head: the
 * client's connection closes at once, and what came cannot look whole (it
 * used to stay open, with nothing, until its idle timeout). A 204 with a
 * Content-Length (and a body): relayed without either, so that the next
 * answer on the client's connection is its own. */
static void test_upstream_malformed(void **state)
{
    struct px *s = px(state);
    static const char *const bad_head[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "garbage\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        "HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok", /* obs-fold */
        "HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    };
    static const char *const bad_body[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    };
    enum { NHEAD = sizeof bad_head / sizeof *bad_head, NBODY = sizeof bad_body / sizeof *bad_body };
    static const char get[] = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    start_fake(s, F_RAW, NULL, NULL, NULL, NULL);
    double failed = metric(s, "proxy_upstream_connections_failed_total");
    double truncated = metric(s, "proxy_upstream_truncated_total");
    for (int i = 0; i < NHEAD; i++) {
        __atomic_store_n(&s->fake->raw, bad_head[i], __ATOMIC_RELEASE);
        int fd = tconn_must(s->port);
        http_expect(fd, get, 502, NULL);
        close(fd);
    }
    static char buf[4096];
    for (int i = 0; i < NBODY; i++) {
        __atomic_store_n(&s->fake->raw, bad_body[i], __ATOMIC_RELEASE);
        int fd = tconn_must(s->port);
        send_str(fd, get);
        ssize_t n = tconn_recv_eof(fd, buf, sizeof buf, T);
        close(fd);
        if (n < 0)
            fail_msg("%.40s...: the client's connection was not closed within %d ms", bad_body[i],
                     T);
        if (whole_response(buf, (size_t)n))
            fail_msg("%.40s...: a whole answer came: %.200s", bad_body[i], buf);
    }
    double f2 = metric(s, "proxy_upstream_connections_failed_total");
    double t2 = metric(s, "proxy_upstream_truncated_total");
    if (f2 - failed != NHEAD || t2 - truncated != NBODY)
        fail_msg("failed +%.0f (want %d), truncated +%.0f (want %d)", f2 - failed, NHEAD,
                 t2 - truncated, NBODY);

    __atomic_store_n(&s->fake->raw, "HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok",
                     __ATOMIC_RELEASE);
    int fd = tconn_must(s->port);
    send_str(fd, get);
    char head[4096];
    ssize_t n = read_head(fd, head, sizeof head, T);
    if (n < 0 || strncmp(head, "HTTP/1.1 204", 12) != 0 || strcasestr(head, "content-length"))
        fail_msg("204 with a Content-Length: got \"%s\", want a 204 head without one",
                 n < 0 ? strerror((int)-n) : head);
    __atomic_store_n(&s->fake->raw, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnext\n",
                     __ATOMIC_RELEASE);
    http_expect(fd, get, 200, "next\n");
    close(fd);
}

static void test_upstream_timeout(void **state)
{
    struct px *s = px(state);
    enum { TIMEOUT_MS = 300, MARGIN_MS = 1500 };
    start_fake(s, F_STALL, "--upstream-timeout-ms", "300", NULL, NULL);
    int fd = tconn_must(s->port);
    thttp_resp_t r = {0};
    long long t0 = tnow_ms();
    int rc = thttp_do(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r, T);
    long long took = tnow_ms() - t0;
    if (rc < 0)
        fail_msg("no answer from a stalled upstream within %d ms (%s)", T, strerror(-rc));
    thttp_free(&r);
    close(fd);
    print_message("504 after %lld ms (--upstream-timeout-ms %d)\n", took, TIMEOUT_MS);
    assert_int_equal(r.status, 504);
    assert_int_equal(ld(&s->fake->requests), 1); /* the upstream had the request */
    /* The timer's clock may round a millisecond or so down. */
    if (took < TIMEOUT_MS - 5 || took > TIMEOUT_MS + MARGIN_MS)
        fail_msg("504 after %lld ms, want %d to %d", took, TIMEOUT_MS, TIMEOUT_MS + MARGIN_MS);
    /* Its connection is closed, not kept: a late answer on it would go to
     * the next client. */
    long long end = tnow_ms() + T;
    while (ld(&s->fake->open) > 0 && tnow_ms() < end)
        tsleep_ms(10);
    if (ld(&s->fake->open) != 0)
        fail_msg("the timed-out upstream connection stayed open");
    assert_true(metric(s, "proxy_upstream_timeouts_total") >= 1);
}

/* ---- the pool ---- */

static void test_pool_reuse(void **state)
{
    struct px *s = px(state);
    start_real(s, "1");
    char *m = metrics_fetch(s);
    if (!strstr(m, "proxy_upstream_connections_opened_total"))
        fail_msg("no proxy_upstream_connections_opened_total in /metrics: %.1000s", m);
    free(m);
    int fd = tconn_must(s->port);
    for (int i = 0; i < 100; i++)
        http_expect(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 200, HELLO_BODY);
    close(fd);
    /* New clients, one request each, on the same loop: the same pool. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(ask_status(s->port, "GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    m = metrics_fetch(s);
    double opened = msum(m, "proxy_upstream_connections_opened_total", s->label, NULL);
    double reused = msum(m, "proxy_upstream_connections_reused_total", s->label, NULL);
    double ok = msum(m, "proxy_upstream_responses_total", s->label, "code=\"200\"");
    double idle = msum(m, "proxy_pool_idle", s->label, NULL);
    free(m);
    print_message("110 requests: %.0f upstream connections opened, %.0f reuses, %.0f 200s, "
                  "%.0f idle\n",
                  opened, reused, ok, idle);
    if (opened != 1 || reused != 109 || ok != 110 || idle != 1) {
        print_proxy_metrics(s);
        fail_msg("want 1 opened, 109 reused, 110 answers 200, 1 idle");
    }
}

static void test_pool_off(void **state)
{
    struct px *s = px(state);
    start_epoll(s);
    start_proxy(s, s->up_port, "--threads", "1", "--upstream-keepalive", "0", NULL);
    int fd = tconn_must(s->port);
    for (int i = 0; i < 100; i++)
        http_expect(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 200, HELLO_BODY);
    close(fd);
    char *m = metrics_fetch(s);
    double opened = msum(m, "proxy_upstream_connections_opened_total", s->label, NULL);
    double reused = msum(m, "proxy_upstream_connections_reused_total", s->label, NULL);
    double idle = msum(m, "proxy_pool_idle", s->label, NULL);
    free(m);
    if (opened != 100 || reused != 0 || idle != 0) {
        print_proxy_metrics(s);
        fail_msg("--upstream-keepalive 0, 100 requests: %.0f opened, %.0f reused, %.0f idle; "
                 "want 100, 0, 0",
                 opened, reused, idle);
    }
}

/* One request on fd: the status (the body is dropped). */
static int status_of(int fd, const char *req)
{
    thttp_resp_t r = {0};
    int rc = thttp_do(fd, req, &r, T);
    thttp_free(&r);
    if (rc < 0)
        fail_msg("%.*s: no answer (%s)", LINE(req), strerror(-rc));
    return r.status;
}

#define POST_REQ "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody"

/* The upstream closes every connection after its answer, without saying
 * so: each GET still succeeds (on a fresh connection, or retried), and a
 * POST is sent once at most. */
static void test_pool_upstream_closes_idle(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_CLOSE_AFTER, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    for (int i = 0; i < 5; i++) {
        int st = status_of(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        if (st != 200)
            fail_msg("GET %d after the upstream closed its idle connection: %d", i, st);
        tsleep_ms(50); /* the close reaches the proxy */
    }
    assert_int_equal(ld(&s->fake->requests), 5);
    int st = status_of(fd, POST_REQ);
    tsleep_ms(SETTLE);
    int posts = ld(&s->fake->posts);
    print_message("POST after an idle close: %d, received %d times\n", st, posts);
    if (posts > 1 || (st == 200 && posts != 1) || (st != 200 && st != 502))
        fail_msg("POST after an idle close: %d, received %d times; want 502 or 200, once at most",
                 st, posts);
    assert_int_equal(status_of(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    close(fd);
}

/* The upstream closes a pooled connection as the next request arrives on
 * it (it reads it, then closes): the GET is retried on a fresh connection
 * and answered; the POST is not sent again. */
static void test_pool_retry_get_not_post(void **state)
{
    struct px *s = px(state);
    start_fake(s, F_DIE_ON_SECOND, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    assert_int_equal(status_of(fd, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    tsleep_ms(20); /* the connection is back in the pool */
    double retries = metric(s, "proxy_upstream_retries_total");
    int st = status_of(fd, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n");
    double after = metric(s, "proxy_upstream_retries_total");
    print_message("GET on a pooled connection closed under it: %d, %d requests upstream over %d "
                  "connections, retries %.0f -> %.0f\n",
                  st, ld(&s->fake->requests), ld(&s->fake->nconns), retries, after);
    if (st != 200 || after != retries + 1) {
        print_proxy_metrics(s);
        fail_msg("want 200 after one retry");
    }
    assert_int_equal(ld(&s->fake->requests), 3); /* /a, /b closed under, /b again */
    tsleep_ms(20);
    st = status_of(fd, POST_REQ);
    tsleep_ms(SETTLE);
    int posts = ld(&s->fake->posts);
    print_message("POST on a pooled connection closed under it: %d, received %d times\n", st,
                  posts);
    if (posts != 1 || (st != 200 && st != 502))
        fail_msg("POST: %d, received %d times; want 502 (or an answer), received once", st, posts);
    if (metric(s, "proxy_upstream_retries_total") != after)
        fail_msg("the POST was counted as retried");
    assert_int_equal(status_of(fd, "GET /c HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    close(fd);
}

/* ---- clients that go away or don't read ---- */

static void test_client_abort(void **state)
{
    struct px *s = px(state);
    enum { ROUNDS = 4, BIG = 16 << 20, TAKE = 64 << 10 };
    start_real(s, "1");
    /* The baseline: one request done, its upstream connection pooled, no
     * client left. */
    assert_int_equal(ask_status(s->port, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    tsleep_ms(SETTLE);
    double idle0 = metric(s, "proxy_pool_idle"), active0 = metric(s, "proxy_upstream_active");
    double aborts0 = metric(s, "proxy_client_aborts_total");
    tsleep_ms(SETTLE); /* the metrics connection closed too */
    int fds0 = fd_count(s->pid);
    char req[96], *buf = malloc(TAKE);
    assert_non_null(buf);
    snprintf(req, sizeof req, "GET /stream?n=%d HTTP/1.1\r\nHost: t\r\n\r\n", BIG);
    for (int i = 0; i < ROUNDS; i++) {
        int fd = tconn_must(s->port);
        send_str(fd, req);
        assert_int_equal(tconn_recv_until(fd, buf, TAKE, NULL, TAKE - 1, T), TAKE - 1);
        if (i % 2)
            tconn_reset(fd);
        else
            close(fd);
        tsleep_ms(20);
    }
    free(buf);
    double active = wait_metric_le(s, "proxy_upstream_active", active0, T);
    double idle = wait_metric_le(s, "proxy_pool_idle", idle0, T);
    double aborts = metric(s, "proxy_client_aborts_total");
    print_message("%d clients gone mid-answer: active %.0f -> %.0f, idle %.0f -> %.0f, "
                  "client aborts +%.0f\n",
                  ROUNDS, active0, active, idle0, idle, aborts - aborts0);
    if (active > active0 || idle > idle0) {
        print_proxy_metrics(s);
        fail_msg("after clients left mid-answer: %.0f upstream connections active, %.0f idle; "
                 "at most %.0f and %.0f before",
                 active, idle, active0, idle0);
    }
    assert_true(aborts >= aborts0 + 1);
    /* The next requests are answered whole and exact: no half-read
     * connection was handed to them. */
    for (int i = 0; i < 3; i++) {
        int fd = tconn_must(s->port);
        http_expect(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 200, HELLO_BODY);
        thttp_resp_t r = {0};
        assert_int_equal(thttp_do(fd, "GET /stream?n=100000 HTTP/1.1\r\nHost: t\r\n\r\n", &r, T),
                         0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, 100000);
        for (size_t k = 0; k < r.body_len; k++)
            if (r.body[k] != 'A')
                fail_msg("after the aborts: stream byte %zu is 0x%02x", k,
                         (unsigned char)r.body[k]);
        thttp_free(&r);
        close(fd);
    }
    /* Every client gone: the descriptors come back to the baseline. */
    int fds = fd_count(s->pid);
    for (long long end = tnow_ms() + T; fds > fds0 && tnow_ms() < end; fds = fd_count(s->pid))
        tsleep_ms(20);
    print_message("descriptors: %d at the baseline, %d after\n", fds0, fds);
    if (fds > fds0)
        fail_msg("the proxy holds %d descriptors, %d at the baseline", fds, fds0);
}

/* Read one response head and a body of 'A's to its end, in pieces: its
 * length, or fail. */
static size_t drain_stream(int fd, int timeout_ms)
{
    char head[4096], *buf = malloc(1 << 16);
    long long deadline = tnow_ms() + timeout_ms;
    assert_non_null(buf);
    ssize_t hl = read_head(fd, head, sizeof head, timeout_ms);
    if (hl < 0)
        fail_msg("no head (%s)", strerror((int)-hl));
    const char *cl = strcasestr(head, "\r\ncontent-length:");
    assert_non_null(cl);
    size_t want = strtoul(cl + 17, NULL, 10), got = 0;
    while (got < want) {
        size_t n = want - got < (1 << 16) ? want - got : (1 << 16);
        ssize_t r = tconn_read_some(fd, buf, n, deadline);
        if (r <= 0)
            break;
        for (ssize_t k = 0; k < r; k++)
            if (buf[k] != 'A')
                fail_msg("stream byte %zu is 0x%02x", got + (size_t)k, (unsigned char)buf[k]);
        got += (size_t)r;
    }
    free(buf);
    return got;
}

/* The receive buffers (ss's rb, bytes) of the proxy's connections to
 * port up_port, at most max of them; their count, or -1 without ss. */
static int upstream_rcvbufs(int up_port, long *rb, int max)
{
    char cmd[128], line[1024];
    snprintf(cmd, sizeof cmd, "ss -tnmH state established '( dport = :%d )' 2>/dev/null", up_port);
    FILE *f = popen(cmd, "r");
    int n = 0;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        const char *m = strstr(line, ",rb");
        if (m && n < max)
            rb[n++] = strtol(m + 3, NULL, 10);
    }
    return pclose(f) == 0 ? n : -1;
}

/* A pooled connection to a near upstream that carries long answers back
 * to back keeps a fixed receive buffer (relay.c's NEAR_RCVBUF, which the
 * kernel doubles for its bookkeeping), where autotuning grew it to
 * megabytes and the answers came at half the rate. */
static void test_near_upstream_rcvbuf(void **state)
{
    struct px *s = px(state);
    enum { ANSWERS = 32, RCVBUF_MAX = 512 << 10 };
    start_real(s, "1");
    int fd = tconn_must(s->port);
    for (int i = 0; i < ANSWERS; i++)
        send_str(fd, "GET /stream?n=1048576 HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < ANSWERS; i++)
        assert_int_equal(drain_stream(fd, 6 * T), 1 << 20);
    long rb[8];
    int n = upstream_rcvbufs(s->up_port, rb, 8);
    if (n < 0)
        fail_msg("ss (iproute2, scripts/deps.sh) could not list the proxy's connections");
    if (n == 0)
        fail_msg("no connection from the proxy to its upstream after %d answers", ANSWERS);
    for (int i = 0; i < n; i++) {
        print_message("the proxy's connection to its upstream: a receive buffer of %ld bytes\n",
                      rb[i]);
        if (rb[i] > RCVBUF_MAX)
            fail_msg("the proxy's connection to a near upstream grew its receive buffer to %ld "
                     "bytes (bound %d)",
                     rb[i], RCVBUF_MAX);
    }
    close(fd);
}

/* More clients than a wait of the loop takes events at once (256), all
 * asking at once, three times: every answer comes. Within a batch, the
 * loop serves some events ahead of others (catch_up); none may be lost. */
static void test_more_clients_than_a_batch(void **state)
{
    struct px *s = px(state);
    enum { CLIENTS = 400, ROUNDS = 3 };
    start_real(s, "1");
    int fds[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        fds[i] = tconn_must(s->port);
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < CLIENTS; i++)
            send_str(fds[i], "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        for (int i = 0; i < CLIENTS; i++) {
            thttp_resp_t a = {0};
            int rc = thttp_read(fds[i], &a, 0, T);
            if (rc < 0 || a.status != 200 || strcmp(a.body, HELLO_BODY) != 0)
                fail_msg("round %d, client %d of %d: %d %s", r + 1, i + 1, CLIENTS, a.status,
                         rc < 0 ? strerror(-rc) : a.body);
            thttp_free(&a);
        }
    }
    for (int i = 0; i < CLIENTS; i++)
        close(fds[i]);
}

/* Behind a long answer, a near upstream gets the next request only once
 * that answer is in, however deep the client pipelines: no client's answers
 * leave the upstream in one burst ahead of the other clients'. */
static void test_near_upstream_long_answers_one_by_one(void **state)
{
    struct px *s = px(state);
    enum { PIPELINED = 3 };
    start_fake(s, F_LONG, NULL, NULL, NULL, NULL);
    int fd = tconn_must(s->port);
    for (int round = 0; round < 2; round++) { /* the first teaches the proxy: long answers */
        int n = round ? PIPELINED : 1;
        for (int i = 0; i < n; i++)
            send_str(fd, "GET /long HTTP/1.1\r\nHost: t\r\n\r\n");
        for (int i = 0; i < n; i++) {
            thttp_resp_t r = {0};
            int rc = thttp_read(fd, &r, 0, T);
            if (rc < 0 || r.status != 200 || r.body_len != LONG_BODY)
                fail_msg("long answer %d of %d: %d, %zu bytes (%s)", i + 1, n, r.status, r.body_len,
                         rc < 0 ? strerror(-rc) : "read");
            thttp_free(&r);
        }
    }
    assert_int_equal(ld(&s->fake->requests), 1 + PIPELINED);
    if (ld(&s->fake->early) != 0)
        fail_msg("%d of %d pipelined requests reached the upstream before the long answer ahead "
                 "of them was in",
                 ld(&s->fake->early), PIPELINED);
    close(fd);
}

static void test_backpressure(void **state)
{
    struct px *s = px(state);
    enum { BIG = 64 << 20, BOUND_KB = 16 << 10, SENDQ_MAX = 256 << 10 };
    start_real(s, "1");
    /* The baseline after one large answer: its buffers have been used once. */
    int fd = tconn_must(s->port);
    send_str(fd, "GET /stream?n=1048576 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(drain_stream(fd, T), 1 << 20);
    close(fd);
    tsleep_ms(SETTLE);
    long base = rss_kb(s->pid);
    fd = tconn_must(s->port);
    char req[96];
    snprintf(req, sizeof req, "GET /stream?n=%d HTTP/1.1\r\nHost: t\r\n\r\n", BIG);
    send_str(fd, req);
    tsleep_ms(1000);
    long held = rss_kb(s->pid);
    size_t queued = tconn_pending(fd);
    long sendq = tproc_send_queue(s->pid, s->port, net_local_port(fd));
    print_message("a client that does not read a %d MiB answer: proxy RSS %ld kB -> %ld kB after "
                  "1 s, %ld bytes in the proxy's socket, %zu waiting at the client\n",
                  BIG >> 20, base, held, sendq, queued);
    assert_true(queued > 0); /* the premise: the answer was under way */
    if (held - base > BOUND_KB)
        fail_msg("the proxy's RSS grew by %ld kB behind a client that does not read (bound %d kB)",
                 held - base, BOUND_KB);
    /* Nor the kernel's memory: the socket holds the client's window in
     * flight and a few unsent bytes (net.c's NET_NOTSENT), not megabytes
     * that the client's window updates would send on its own CPU. */
    if (sendq < 0)
        fail_msg("the proxy's socket to the client is not in /proc/%d/net/tcp", (int)s->pid);
    if (sendq > SENDQ_MAX)
        fail_msg("the proxy's socket holds %ld bytes for a client that does not read (bound %d)",
                 sendq, SENDQ_MAX);
    /* Read now: all of it comes, nothing was lost while it waited. */
    size_t got = drain_stream(fd, 6 * T);
    close(fd);
    assert_int_equal(got, BIG);
}

/* --splice: a client idle after a long body gives its pipe back (two
 * descriptors) when it gives back its buffers, a second later: idle
 * keep-alive clients hold none. Its next long body makes one again. */
static void test_idle_gives_back_pipe(void **state)
{
    struct px *s = px(state);
    static const char req[] = "GET /stream?n=1048576 HTTP/1.1\r\nHost: t\r\n\r\n";
    start_epoll(s);
    start_proxy(s, s->up_port, "--threads", "1", "--splice", NULL);
    int fd = tconn_must(s->port);
    send_str(fd, req);
    assert_int_equal(drain_stream(fd, T), 1 << 20);
    tsleep_ms(SETTLE);
    int busy = fd_count(s->pid), idle = busy;
    for (long long end = tnow_ms() + 1000 + T; idle > busy - 2 && tnow_ms() < end;)
        tsleep_ms(50), idle = fd_count(s->pid);
    print_message("descriptors: %d after a 1 MiB answer, %d once the client idled\n", busy, idle);
    if (idle != busy - 2)
        fail_msg("an idle client's proxy holds %d descriptors, %d while it was busy: want its "
                 "pipe's two given back",
                 idle, busy);
    double spliced0 = metric(s, "proxy_upstream_spliced_bytes_total");
    send_str(fd, req);
    assert_int_equal(drain_stream(fd, T), 1 << 20);
    assert_true(metric(s, "proxy_upstream_spliced_bytes_total") - spliced0 >= (1 << 20) - 65536);
    close(fd);
}

/* --splice, from an upstream whose segments are small (an MSS of 1,400
 * bytes, as across an Ethernet LAN): its long bodies are copied all the
 * same (each segment would take a pipe slot of its own, after a copy into
 * a page), and arrive whole. */
static void test_small_segments_copied(void **state)
{
    struct px *s = px(state);
    enum { BODY = 200000 };
    start_fake(s, F_ECHO, "--splice", NULL, NULL, NULL);
    int mss = 1400; /* announced in the SYN-ACK of every connection accepted from now */
    assert_int_equal(setsockopt(s->fake->lfd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss), 0);
    char *req = malloc(BODY + 128), *body;
    assert_non_null(req);
    int n = sprintf(req, "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", BODY);
    memset(req + n, 'b', BODY);
    int fd = tconn_must(s->port);
    for (int round = 0; round < 2; round++) {
        http_request_t q;
        size_t blen;
        char *got = echoed(fd, req, (size_t)n + BODY, &q, &body, &blen);
        if (blen != BODY || strspn(body, "b") < BODY)
            fail_msg("round %d: %zu bytes of the body came back, want %d 'b's", round, blen, BODY);
        free(got);
    }
    free(req);
    close(fd);
    double spliced = metric(s, "proxy_upstream_spliced_bytes_total");
    if (spliced != 0)
        fail_msg("%.0f bytes spliced from an upstream of 1,400-byte segments, want none", spliced);
}

/* --no-splice (the default, still accepted) undoes --splice: long bodies
 * are copied, whole, and nothing goes by a pipe. */
static void test_no_splice(void **state)
{
    struct px *s = px(state);
    start_epoll(s);
    start_proxy(s, s->up_port, "--threads", "1", "--splice", "--no-splice", NULL);
    int fd = tconn_must(s->port);
    for (int i = 0; i < 3; i++) {
        send_str(fd, "GET /stream?n=1048576 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_int_equal(drain_stream(fd, T), 1 << 20);
    }
    close(fd);
    assert_true(metric(s, "proxy_upstream_spliced_bytes_total") == 0);
}

/* server-epoll, and the proxy in front of it under a limit of 256
 * descriptors (prlimit; the test is skipped without it), with `flag` (NULL:
 * none). */
static void start_proxy_256(struct px *s, const char *flag)
{
    if (access("/usr/bin/prlimit", X_OK) != 0)
        skip();
    start_epoll(s);
    char up[32];
    snprintf(up, sizeof up, "127.0.0.1:%d", s->up_port);
    snprintf(s->label, sizeof s->label, "upstream=\"%s\"", up);
    const char *argv[] = {"/usr/bin/prlimit",
                          "--nofile=256:256",
                          tproc_bin("server-proxy"),
                          "--port",
                          "0",
                          "--upstream",
                          up,
                          "--threads",
                          "1",
                          flag,
                          NULL};
    s->pid = tproc_start(argv, &s->port);
    assert_true(s->pid > 0);
}

/* n clients that ask for 10 MB answers and read only their heads: each
 * holds its upstream connection (and, spliced, a pipe). */
static void stall_clients(struct px *s, int *fds, int n)
{
    char head[4096];
    for (int i = 0; i < n; i++) {
        fds[i] = tconn_must(s->port);
        send_str(fds[i], "GET /stream?n=10000000 HTTP/1.1\r\nHost: t\r\n\r\n");
        ssize_t r = read_head(fds[i], head, sizeof head, T);
        if (r < 0 || strncmp(head, "HTTP/1.1 200", 12) != 0)
            fail_msg("stalled client %d: no 200 head (%s)", i, r < 0 ? strerror((int)-r) : head);
    }
}

/* --splice: clients stalled in long answers hold pipes, but never the descriptors a
 * client within the cap needs: under 256 descriptors the default cap is 64
 * clients (each with an upstream connection: 128), which leaves 64 for
 * pipes. 62 clients that do not read 10 MB answers, then 2 more: all 64
 * answered. (Pipes beyond their share used to take the last clients'
 * descriptors: 502 and 503.) */
static void test_descriptor_budget(void **state)
{
    struct px *s = px(state);
    enum { STALLED = 62, MORE = 2 };
    start_proxy_256(s, "--splice");
    int fds[STALLED];
    stall_clients(s, fds, STALLED);
    tsleep_ms(SETTLE); /* their pipes fill */
    int more[MORE];
    for (int i = 0; i < MORE; i++) /* all at once: 64 clients */
        more[i] = tconn_must(s->port);
    for (int i = 0; i < MORE; i++) {
        http_expect(more[i], "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 200, HELLO_BODY);
        close(more[i]);
    }
    for (int i = 0; i < STALLED; i++)
        close(fds[i]);
}

/* Copying (the default), a client holds two descriptors at most (its
 * socket and an upstream connection), so the default cap under 256 is
 * (256 - 64) / 2 = 96 clients: 96 clients stalled in 10 MB answers all get
 * theirs, and the 97th a 503, not a hang or an error of descriptors. (The
 * cap was a third, as for pipes that only --splice makes: the 65th got a
 * 503.) */
static void test_default_cap_copying(void **state)
{
    struct px *s = px(state);
    enum { CAP = (256 - 64) / 2 };
    start_proxy_256(s, NULL);
    int fds[CAP];
    stall_clients(s, fds, CAP);
    int more = tconn_must(s->port); /* refused on arrival, before it asks */
    char head[4096];
    ssize_t n = read_head(more, head, sizeof head, T);
    if (n < 0 || strncmp(head, "HTTP/1.1 503", 12) != 0)
        fail_msg("client %d: no 503 (%s)", CAP + 1, n < 0 ? strerror((int)-n) : head);
    close(more);
    for (int i = 0; i < CAP; i++)
        close(fds[i]);
}

/* ---- the line protocol and the flags ---- */

static void test_line_protocol_err(void **state)
{
    struct px *s = px(state);
    start_real(s, "1");
    int fd = tconn_must(s->port);
    char buf[256];
    send_str(fd, "PING\n");
    ssize_t n = tconn_recv_until(fd, buf, sizeof buf, "\n", 0, T);
    if (n < 0 || strncmp(buf, "ERR ", 4) != 0)
        fail_msg("PING: %zd \"%s\", want an ERR line", n, buf);
    close(fd);
}

static void test_bad_flags(void **state)
{
    (void)px(state);
    static const char *const cases[][6] = {
        {"--port", "0", NULL},
        {"--port", "0", "--upstream", "nohost", NULL},
        {"--port", "0", "--upstream", "127.0.0.1:99999", NULL},
        {"--port", "0", "--upstream", "127.0.0.1:", NULL},
        {"--port", "0", "--upstream", "127.0.0.1:1", "--nope", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[8] = {tproc_bin("server-proxy")};
        char err[1024], line[128] = "";
        for (int k = 0; cases[i][k]; k++) {
            argv[k + 1] = cases[i][k];
            snprintf(line + strlen(line), sizeof line - strlen(line), " %s", cases[i][k]);
        }
        int rc = tproc_run(argv, T, err, sizeof err);
        const char *nl = strchr(err, '\n');
        if (rc != 2 || !nl || nl[1] != '\0' || nl == err)
            fail_msg("server-proxy%s: exit %d, stderr \"%s\"; want exit 2 and one line", line, rc,
                     err);
    }
}

#define TEST(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        TEST(test_routes_and_keepalive),
        TEST(test_head),
        TEST(test_stream_bodies),
        TEST(test_stream_bodies_spliced),
        TEST(test_pipelined),
        TEST(test_more_clients_than_a_batch),
        TEST(test_http10_and_close),
        TEST(test_forwarded_headers),
        TEST(test_request_bodies),
        TEST(test_chunked_response),
        TEST(test_big_heads),
        TEST(test_smuggling_rejected),
        TEST(test_upstream_refused),
        TEST(test_upstream_reset),
        TEST(test_upstream_truncated),
        TEST(test_upstream_malformed),
        TEST(test_upstream_timeout),
        TEST(test_pool_reuse),
        TEST(test_pool_off),
        TEST(test_pool_upstream_closes_idle),
        TEST(test_pool_retry_get_not_post),
        TEST(test_client_abort),
        TEST(test_backpressure),
        TEST(test_near_upstream_rcvbuf),
        TEST(test_near_upstream_long_answers_one_by_one),
        TEST(test_idle_gives_back_pipe),
        TEST(test_descriptor_budget),
        TEST(test_default_cap_copying),
        TEST(test_no_splice),
        TEST(test_small_segments_copied),
        TEST(test_line_protocol_err),
        TEST(test_bad_flags),
    };
    return cmocka_run_group_tests_name("server-proxy", tests, NULL, NULL);
}
