/* template server - the starting point for a design of your own (lab
 * experiment 12). Copy it to servers/<name>.c: `make` builds it as
 * bin/server-<name>, and `scripts/lab conform <name>` checks it against the
 * protocol and runs the core experiments on it.
 *
 * As given, it serves one connection at a time (the iterative model), so it
 * passes the protocol checks and fails the concurrency ones. Your design
 * decides only how to wait; the core does everything else:
 *
 *   server_init()          flags (--port, timeouts...), signals; exits 2 on a bad flag
 *   server_listen()        the listening socket (NET_NONBLOCK, NET_REUSEPORT)
 *   server_announce()      prints "listening on HOST:PORT" (scripts wait for it)
 *   server_accept()        one connection, non-blocking; --max-conns enforced
 *   server_serve_blocking() a whole connection, waiting in poll() on it alone
 *
 * An event-driven design instead keeps many sessions (servers/core/session.h)
 * and, whenever one is ready, calls session_on_readable / _writable /
 * _on_timer; each returns SESS_* bits saying what to wait for next (READ,
 * WRITE, CLOSE, or WORK: a long BURN to run off the loop), and
 * session_deadline() says when to call session_on_timer. servers/poll.c is
 * the shortest such loop; servers/epoll.c the fastest; core/reactor.c the
 * multi-threaded one.
 *
 * Ideas: a process per connection (fork after accept; what happens to
 * /metrics?), a pre-forked pool of iterative servers sharing the listening
 * socket, a fixed pool of threads each running server_serve_blocking, or an
 * event loop on io_uring.
 * Weakness (as given): the iterative one - any slow client blocks everyone. */
#include <errno.h>

#include "core/server.h"

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "template", 0, &cfg);
    int lfd = server_listen(&cfg, 0);
    server_announce(&cfg, lfd);

    int fd;
    while ((fd = server_accept_blocking(lfd, &cfg)) != -ECANCELED)
        if (fd >= 0)
            server_serve_blocking(fd, &cfg);
    return 0;
}
