/* template server - the starting point for a design of your own (the lab's
 * conform experiment). Copy it to servers/<name>.c: `make` builds it as
 * bin/server-<name>, and `scripts/lab conform <name>` checks it against the
 * protocol and runs the core experiments on it.
 *
 * As given, it serves one connection at a time (the iterative model), so it
 * passes the protocol checks and fails the concurrency ones. Your design
 * decides how to wait; the core (servers/core/server.h) does the rest:
 *
 *   server_init()           flags (--port, timeouts...), signals; exits 2 on a bad flag
 *   server_listen()         the listening socket (NET_NONBLOCK, NET_REUSEPORT)
 *   server_announce()       prints "listening on HOST:PORT" (scripts wait for it)
 *   server_accept()         one connection, non-blocking; --max-conns enforced
 *   server_accept_blocking() the same, waiting for it (or for the stop)
 *   server_wait_one()       poll() on one connection alone (serve() below)
 *
 * A session (servers/core/session.h) is the protocol of one connection: call
 * session_on_readable / _on_writable / _on_error / _on_timer when its socket
 * is ready or its deadline (session_deadline) passes; each returns SESS_*
 * bits saying what to wait for next (READ, WRITE, CLOSE, or WORK: a BURN to
 * run, here or off the loop). An event-driven design keeps many sessions in
 * a server_loop_t (server_accept_session, server_loop_*): servers/poll.c is
 * the shortest such loop, servers/epoll.c the fastest, servers/reactor.c the
 * multi-threaded one.
 *
 * Ideas: a process per connection (fork after accept; what happens to
 * /metrics?), a pre-forked pool of iterative servers sharing the listening
 * socket, a fixed pool of threads each running serve(), or an event loop on
 * io_uring.
 * Weakness (as given): the iterative one - any slow client blocks everyone. */
#include <errno.h>

#include "core/server.h"

/* Serve one connection to its end: wait for what the session wants, let it
 * act (read and parse, answer, write), and go round. A BURN runs right here. */
static void serve(int fd, const server_cfg_t *cfg)
{
    session_t s;
    int w = SESS_READ;
    int64_t drain_end = 0; /* set once the server stops */
    session_init(&s, fd, &cfg->session);
    while (!(w & SESS_CLOSE)) {
        if (w & SESS_WORK) {
            session_work_run(&s);
            w = session_on_work_done(&s);
            continue;
        }
        if (server_stopping && !drain_end) {
            /* Answer what is in flight, then close (SERVER_DRAIN_MS at most). */
            drain_end = time_update() + SERVER_DRAIN_MS;
            w = session_shutdown(&s);
            continue;
        }
        switch (server_wait_one(&s, w, drain_end)) { /* poll() on this socket alone */
        case SERVER_EV_NONE:
            break;
        case SERVER_EV_READABLE:
            w = session_on_readable(&s);
            break;
        case SERVER_EV_WRITABLE:
            w = session_on_writable(&s);
            break;
        case SERVER_EV_ERROR:
            w = session_on_error(&s);
            break;
        case SERVER_EV_TIMER:
            w = session_on_timer(&s);
            break;
        default: /* drained, or poll failed */
            w = SESS_CLOSE;
        }
    }
    session_close(&s);
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "template", 0, &cfg);
    int lfd = server_listen(&cfg, 0);
    if (lfd < 0)
        return 1;
    server_announce(&cfg, lfd);

    int fd;
    while ((fd = server_accept_blocking(lfd, &cfg)) != -ECANCELED)
        if (fd >= 0)
            serve(fd, &cfg);
    return 0;
}
