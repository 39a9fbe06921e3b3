/* poll server - one thread serves every connection: non-blocking sockets,
 * readiness from poll(2), and WAITs kept as deadlines in a timer heap, so
 * no client waits for another's WAIT or slow reading.
 *
 * Unlike select there is no FD_SETSIZE ceiling: the array holds any
 * descriptor. But every wake-up still rebuilds it and the kernel scans it
 * whole: O(connections), which epoll avoids.
 * Weakness: cost grows with idle connections; one core, and a long BURN
 * stalls everyone. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/net.h"
#include "core/server.h"

static timers_t timers;

/* Remember what the session wants (the array is rebuilt from it before each
 * poll) and file its deadline. */
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
    server_init(argc, argv, "poll", 0, &cfg);
    int lfd = server_listen(&cfg, NET_NONBLOCK);
    struct pollfd *pfd = NULL;
    size_t cap = 0;
    server_announce(&cfg, lfd);

    while (server_loop_running(lfd)) {
        size_t n = 2, want = 2 + (size_t)server_session_count();
        if (want > cap) {
            struct pollfd *p = realloc(pfd, want * 2 * sizeof *p);
            if (!p)
                break;
            pfd = p;
            cap = want * 2;
        }
        /* fd -1 is ignored: after the stop, neither is watched any more. */
        pfd[0] = (struct pollfd){.fd = lfd >= 0 ? server_stop_fd() : -1, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int fd = 0; fd < server_session_end(); fd++) {
            session_t *s = server_session_at(fd);
            if (s)
                pfd[n++] = (struct pollfd){
                    .fd = fd,
                    .events = (short)(((s->armed & SESS_READ) ? POLLIN : 0) |
                                      ((s->armed & SESS_WRITE) ? POLLOUT : 0))};
        }
        int timeout = server_loop_timeout(&timers, lfd);
        int ready = poll(pfd, n, timeout);
        time_update();
        if (ready < 0 && errno != EINTR)
            break;
        if (ready > 0) {
            for (size_t i = 2; i < n; i++) {
                session_t *s = server_session_at(pfd[i].fd);
                short ev = pfd[i].revents;
                if (!s || !ev)
                    continue;
                if (ev & POLLIN)
                    apply(s, session_on_readable(s));
                else if (ev & POLLOUT)
                    apply(s, session_on_writable(s));
                else
                    apply(s, session_on_error(s));
            }
            session_t *s;
            if (pfd[1].revents & POLLIN)
                while ((s = server_accept_session(lfd, &cfg)) != NULL)
                    apply(s, SESS_READ);
        }
        server_loop_timers(&timers, apply);
        server_loop_stop(&lfd, apply);
    }
    server_loop_end();
    free(pfd);
    return 0;
}
