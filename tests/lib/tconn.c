/* tconn, thttp: blocking client connections with bounded waits. */
#include "tlib.h"

#include "core/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

static int tconn_open_opt(int port, int narrow);

int tconn_open(int port)
{
    return tconn_open_opt(port, 0);
}

int tconn_must(int port)
{
    int fd = tconn_open(port);
    if (fd < 0)
        fail_msg("connect to 127.0.0.1:%d: %s", port, strerror(-fd));
    return fd;
}

int tconn_open_narrow(int port)
{
    return tconn_open_opt(port, 1);
}

static int tconn_open_opt(int port, int narrow)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Before connect, since the handshake tells them to the server: a
     * small window, and small segments, which keep the server's send
     * buffer small too (Linux sizes it from the segment size: about 4 MB
     * on loopback otherwise, all of it taken before a session queues a
     * byte). */
    int rcvbuf = 4096, mss = 536;
    if (narrow && (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) < 0 ||
                   setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss) < 0)) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

void tconn_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    /* Without SO_LINGER the close would be an orderly FIN; a failure here
     * leaves exactly that, which the callers' checks would then show. */
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

char *tconn_batch(const char *one, int n, const char *last, size_t *len)
{
    size_t a = strlen(one), b = strlen(last);
    char *p = malloc((size_t)n * a + b + 1);
    if (!p)
        abort();
    for (int i = 0; i < n; i++)
        memcpy(p + (size_t)i * a, one, a);
    memcpy(p + (size_t)n * a, last, b + 1);
    *len = (size_t)n * a + b;
    return p;
}

int tconn_send(int fd, const void *p, size_t n)
{
    return net_write_all(fd, p, n);
}

int tconn_sends(int fd, const char *s)
{
    return tconn_send(fd, s, strlen(s));
}

/* Wait until fd is readable or the deadline passes. 0, -ETIMEDOUT or -errno. */
static int wait_readable(int fd, long long deadline)
{
    for (;;) {
        long long left = deadline - tnow_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

ssize_t tconn_read_some(int fd, char *p, size_t n, long long deadline)
{
    for (;;) {
        int rc = wait_readable(fd, deadline);
        if (rc < 0)
            return rc;
        ssize_t r = read(fd, p, n);
        if (r >= 0)
            return r;
        if (errno == ECONNRESET)
            return 0;
        if (errno != EINTR && errno != EAGAIN)
            return -errno;
    }
}

ssize_t tconn_recv_until(int fd, char *buf, size_t cap, const char *term, size_t want,
                         int timeout_ms)
{
    long long deadline = tnow_ms() + timeout_ms;
    size_t len = 0;
    if (cap == 0)
        return -ENOBUFS;
    buf[0] = '\0';
    for (;;) {
        if (term ? strstr(buf, term) != NULL : len >= want)
            return (ssize_t)len;
        if (len + 1 >= cap)
            return -ENOBUFS;
        /* Without a terminator, never read past `want`. */
        size_t n = cap - 1 - len;
        if (!term && n > want - len)
            n = want - len;
        ssize_t r = tconn_read_some(fd, buf + len, n, deadline);
        if (r == 0)
            return -EPIPE;
        if (r < 0)
            return r;
        len += (size_t)r;
        buf[len] = '\0';
    }
}

ssize_t tconn_recv_eof(int fd, char *buf, size_t cap, int timeout_ms)
{
    long long deadline = tnow_ms() + timeout_ms;
    size_t len = 0;
    char sink[16384];
    if (cap)
        buf[0] = '\0';
    for (;;) {
        int room = len + 1 < cap;
        ssize_t r = tconn_read_some(fd, room ? buf + len : sink, room ? cap - 1 - len : sizeof sink,
                                    deadline);
        if (r == 0)
            return (ssize_t)len;
        if (r < 0)
            return r;
        if (room) {
            len += (size_t)r;
            buf[len] = '\0';
        }
    }
}

int tconn_closed(int fd, int timeout_ms)
{
    long long deadline = tnow_ms() + timeout_ms;
    char sink[16384];
    for (;;) {
        ssize_t r = tconn_read_some(fd, sink, sizeof sink, deadline);
        if (r == 0)
            return 1;
        if (r < 0)
            return 0;
    }
}

size_t tconn_pending(int fd)
{
    int n = 0;
    if (ioctl(fd, FIONREAD, &n) < 0 || n < 0)
        return 0;
    return (size_t)n;
}

/* ---- HTTP ---- */

#define MAX_BODY (256L << 20)

int thttp_read(int fd, thttp_resp_t *r, int no_body, int timeout_ms)
{
    long long deadline = tnow_ms() + timeout_ms;
    r->status = 0;
    r->content_length = -1;
    r->head_len = 0;
    r->head[0] = '\0';
    r->body = NULL;
    r->body_len = 0;

    /* Byte by byte: a pipelined response after this one stays in the socket. */
    for (;;) {
        if (r->head_len + 1 >= sizeof r->head)
            return -EPROTO;
        ssize_t n = tconn_read_some(fd, r->head + r->head_len, 1, deadline);
        if (n == 0)
            return -EPIPE;
        if (n < 0)
            return (int)n;
        r->head[++r->head_len] = '\0';
        if (r->head_len >= 4 && memcmp(r->head + r->head_len - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    if (strncmp(r->head, "HTTP/1.", 7) != 0 || r->head[8] != ' ')
        return -EPROTO;
    r->status = atoi(r->head + 9);
    for (const char *p = strchr(r->head, '\n'); p && p[1]; p = strchr(p + 1, '\n'))
        if (strncasecmp(p + 1, "content-length:", 15) == 0)
            r->content_length = strtol(p + 16, NULL, 10);
    if (r->content_length < 0 || r->content_length > MAX_BODY)
        return -EPROTO;

    size_t want = no_body ? 0 : (size_t)r->content_length;
    r->body = malloc(want + 1);
    if (!r->body)
        return -ENOMEM;
    while (r->body_len < want) {
        ssize_t n = tconn_read_some(fd, r->body + r->body_len, want - r->body_len, deadline);
        if (n == 0)
            break;
        if (n < 0) {
            r->body[r->body_len] = '\0';
            return (int)n;
        }
        r->body_len += (size_t)n;
    }
    r->body[r->body_len] = '\0';
    return r->body_len == want ? 0 : -EPIPE;
}

int thttp_do(int fd, const char *req, thttp_resp_t *r, int timeout_ms)
{
    int rc = tconn_sends(fd, req);
    if (rc < 0) {
        r->body = NULL;
        return rc;
    }
    return thttp_read(fd, r, strncmp(req, "HEAD ", 5) == 0, timeout_ms);
}

int thttp_has_header(const thttp_resp_t *r, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = strchr(r->head, '\n'); p && p[1]; p = strchr(p + 1, '\n'))
        if (strncasecmp(p + 1, line, n) == 0 && p[1 + n] == '\r')
            return 1;
    return 0;
}

void thttp_free(thttp_resp_t *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}
