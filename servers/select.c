/* select server - one thread serves every connection: non-blocking sockets,
 * readiness from select(2), and WAITs kept as deadlines in a timer heap, so
 * no client waits for another's WAIT or slow reading.
 *
 * Every wake-up rebuilds the descriptor sets and scans them: O(connections).
 * Weakness: an fd_set only holds descriptors below FD_SETSIZE (1024), so
 * connections that would get a larger one are refused with 503 (setting a
 * bit past the set is undefined behaviour). One core, and a long BURN stalls
 * everyone. */
#include <errno.h>
#include <sys/select.h>
#include <unistd.h>

#include "core/net.h"
#include "core/server.h"

static timers_t timers;

/* Remember what the session wants (the sets are rebuilt from it before each
 * select) and file its deadline. */
static void apply(session_t *s, int wants)
{
    if (wants & SESS_CLOSE) {
        timers_set(&timers, &s->timer, 0);
        server_session_free(s);
        return;
    }
    s->armed = (unsigned)wants;
    timers_set(&timers, &s->timer, session_deadline(s));
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "select", 0, &cfg);
    cfg.max_fd = FD_SETSIZE;
    int lfd = server_listen(&cfg, NET_NONBLOCK);
    server_announce(&cfg, lfd);

    while (server_loop_running(lfd)) {
        fd_set rd, wr;
        FD_ZERO(&rd);
        FD_ZERO(&wr);
        int maxfd = -1;
        if (lfd >= 0) { /* the stop descriptor stays readable: only until the stop */
            FD_SET(server_stop_fd(), &rd);
            FD_SET(lfd, &rd);
            maxfd = lfd > server_stop_fd() ? lfd : server_stop_fd();
        }
        for (int fd = 0; fd < server_session_end(); fd++) {
            session_t *s = server_session_at(fd);
            if (!s)
                continue;
            if (s->armed & SESS_READ)
                FD_SET(fd, &rd);
            if (s->armed & SESS_WRITE)
                FD_SET(fd, &wr);
            maxfd = fd > maxfd ? fd : maxfd;
        }
        int timeout = server_loop_timeout(&timers, lfd);
        struct timeval tv = {timeout / 1000, (timeout % 1000) * 1000};
        int n = select(maxfd + 1, &rd, &wr, NULL, timeout < 0 ? NULL : &tv);
        time_update();
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0) {
            for (int fd = 0; fd < server_session_end(); fd++) {
                session_t *s = server_session_at(fd);
                if (!s)
                    continue;
                if (FD_ISSET(fd, &rd))
                    apply(s, session_on_readable(s));
                else if (FD_ISSET(fd, &wr))
                    apply(s, session_on_writable(s));
            }
            session_t *s;
            if (lfd >= 0 && FD_ISSET(lfd, &rd))
                while ((s = server_accept_session(lfd, &cfg)) != NULL)
                    apply(s, SESS_READ);
        }
        server_loop_timers(&timers, apply);
        server_loop_stop(&lfd, apply);
    }
    server_loop_end();
    return 0;
}
