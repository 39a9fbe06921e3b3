#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int net_resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *sslen,
                char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int net_listen(const char *host, int port, int backlog, int flags, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    int fd = -1, one = 1, rc;

    if ((rc = net_resolve(host, port, &ss, &sslen, err, errlen)) < 0)
        return rc;
    fd = socket(ss.ss_family,
                SOCK_STREAM | SOCK_CLOEXEC | ((flags & NET_NONBLOCK) ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        goto err;
    /* This helps avoid spurious EADDRINUSE when the previous instance of this
     * server died with connections in TIME_WAIT. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        goto err;
    if ((flags & NET_REUSEPORT) && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto err;
    if (bind(fd, (struct sockaddr *)&ss, sslen) < 0)
        goto err;
    if (listen(fd, backlog) < 0)
        goto err;
    return fd;
err:
    rc = -errno;
    snprintf(err, errlen, "listen on %s:%d: %s", host, port, strerror(errno));
    if (fd >= 0)
        close(fd);
    return rc;
}

int net_connect(const struct sockaddr *sa, socklen_t salen, const struct sockaddr *from,
                socklen_t fromlen, int flags)
{
    int fd = socket(sa->sa_family,
                    SOCK_STREAM | SOCK_CLOEXEC | ((flags & NET_NONBLOCK) ? SOCK_NONBLOCK : 0), 0);
    int rc, one = 1;
    if (fd < 0)
        return -errno;
    if (from) {
        /* Let the kernel pick the port only at connect time, so many source
         * addresses can each use the whole ephemeral range (c10k lab). */
        /* Best effort (Linux >= 4.2): without it the bind takes a port. */
        (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, from, fromlen) < 0)
            goto err;
    }
    /* Best effort: Nagle only adds latency, never breaks the connection. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS)
        goto err;
    return fd;
err:
    rc = -errno;
    close(fd);
    return rc;
}

int net_connect_result(int fd)
{
    int e = 0;
    socklen_t len = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
        return -errno;
    return -e;
}

int net_local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

int net_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int net_set_nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        return -errno;
    return 0;
}

/* Why few unsent bytes. Whatever a socket holds unsent is sent when the
 * peer's acknowledgements open its window, and on one host the kernel does
 * that sending, down to the peer's receiving, in the context of the process
 * that acknowledged: the client's. Without a bound a server's socket
 * autotunes to megabytes and the client pays for the server's answers:
 * server-epoll, 64 connections of 1 MiB answers, loadgen 400-420 us of CPU
 * an answer and 2.4k answers/s; with 32 KiB 171-181 us and 5.0-5.6k (the
 * server's own CPU fell too, 195-206 to 178-199 us: probably as the bytes go
 * out while they are still in its cache). 16 KiB did as well; 64 KiB cost
 * the server 250 us, 128 KiB 300-430. The proxy's client sockets showed it
 * first (loadgen 64-85 us a pipelined 64 KiB answer, 17-19 behind HAProxy).
 */
int net_set_notsent(int fd)
{
    int notsent = NET_NOTSENT;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &notsent, sizeof notsent) < 0)
        return -errno;
    return 0;
}

int net_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}
