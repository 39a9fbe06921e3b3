/* iterative server - one connection at a time: accept it, serve it to the
 * end with blocking waits, then accept the next.
 *
 * The simplest model, and the lesson of the lab: while one client is served,
 * nobody else is. A WAIT, a slow reader of a STREAM or a client that sends
 * its request one byte a second (slowloris) holds up every other client, who
 * sit in the listen backlog. The header timeout is its only defence. */
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
    server_init(argc, argv, "iterative", 0, &cfg);
    int lfd = server_listen(&cfg, 0);
    if (lfd < 0)
        return 1;
    server_announce(&cfg, lfd);

    /* Accept one, serve it to the end, accept the next: the others wait in
     * the listen backlog meanwhile. */
    int fd;
    while ((fd = server_accept_blocking(lfd, &cfg)) != -ECANCELED)
        if (fd >= 0)
            serve(fd, &cfg);
    return 0;
}
