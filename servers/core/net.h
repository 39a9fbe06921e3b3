/* net: the few socket calls every server, the load generator and the tests share.
 *
 * Functions return a descriptor or 0 on success and a negative errno on
 * failure; those that take `err` also write a one-line reason into it. */
#ifndef CORE_NET_H
#define CORE_NET_H

#include <stddef.h>
#include <sys/socket.h>

#define NET_REUSEPORT 1 /* several sockets (threads, processes) share the port */
#define NET_NONBLOCK  2 /* the returned socket is non-blocking */

#define NET_NOTSENT (32 << 10) /* unsent bytes a socket may hold (net_set_notsent) */

/* Listen on host:port (port 0 picks a free one) with the given backlog.
 * Returns the listening descriptor, or a negative errno with `err` filled. */
int net_listen(const char *host, int port, int backlog, int flags, char *err, size_t errlen);

/* Resolve host:port (numeric or a name) into an IPv4/IPv6 address.
 * Returns 0 or a negative errno (-EINVAL for an unknown host) with `err` filled. */
int net_resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *sslen,
                char *err, size_t errlen);

/* Start a TCP connection to `sa`, optionally from the local address `from`
 * (NULL: any). With NET_NONBLOCK the connect may still be in progress
 * (check with net_connect_result). Sets TCP_NODELAY. Returns the descriptor or
 * a negative errno. */
int net_connect(const struct sockaddr *sa, socklen_t salen, const struct sockaddr *from,
                socklen_t fromlen, int flags);

/* Outcome of a non-blocking connect once the socket is writable: 0 or -errno. */
int net_connect_result(int fd);

/* The local port a socket is bound to, or a negative errno. */
int net_local_port(int fd);

/* Make fd non-blocking. Returns 0 or a negative errno. */
int net_set_nonblock(int fd);

/* Disable Nagle's algorithm: responses are written whole, so waiting for more
 * only adds latency. Returns 0 or a negative errno. */
int net_set_nodelay(int fd);

/* Keep at most NET_NOTSENT bytes unsent in fd's send queue
 * (TCP_NOTSENT_LOWAT): a write stops there, and the socket is writable again
 * once less than half of it waits. Every accepted connection gets it
 * (server_admit). Returns 0 or a negative errno (-ENOPROTOOPT before Linux
 * 3.12: the socket then works as before). */
int net_set_notsent(int fd);

/* Send all n bytes on a blocking socket, retrying short writes and EINTR;
 * a peer that is gone is -EPIPE, never a SIGPIPE. Returns 0 or a negative errno. */
int net_write_all(int fd, const void *p, size_t n);

#endif
