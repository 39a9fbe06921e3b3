/* epoll server - one thread serves every connection: non-blocking sockets,
 * readiness from epoll(7), and WAITs kept as deadlines in a timer heap, so
 * no client waits for another's WAIT or slow reading.
 *
 * The kernel keeps the interest set, so a wake-up costs O(ready), not
 * O(connections) as with select and poll.
 * Weakness: one core, and a long BURN runs on the loop and stalls every
 * other client until it ends (the reactor hands BURN to workers). */
#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/net.h"
#include "core/server.h"

static timers_t timers;
static int ep;

/* Tell epoll and the timer heap what the session wants next. */
static void apply(session_t *s, int wants)
{
    if (wants & SESS_CLOSE) {
        timers_set(&timers, &s->timer, 0);
        server_session_free(s); /* close() also removes it from epoll */
        return;
    }
    unsigned ev = ((wants & SESS_READ) ? EPOLLIN : 0) | ((wants & SESS_WRITE) ? EPOLLOUT : 0);
    if (ev != s->armed) {
        struct epoll_event e = {.events = ev, .data.ptr = s};
        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
        s->armed = ev;
    }
    timers_set(&timers, &s->timer, session_deadline(s));
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "epoll", 0, &cfg);
    int lfd = server_listen(&cfg, NET_NONBLOCK);
    static int listener, stopper; /* markers for the two special descriptors */

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e);
    e.data.ptr = &stopper;
    epoll_ctl(ep, EPOLL_CTL_ADD, server_stop_fd(), &e);
    server_announce(&cfg, lfd);

    while (server_loop_running(lfd)) {
        struct epoll_event evs[256];
        int timeout = server_loop_timeout(&timers, lfd);
        int n = epoll_wait(ep, evs, 256, timeout);
        time_update();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            unsigned ev = evs[i].events;
            if (p == &stopper) { /* stays readable: handled once, below */
                epoll_ctl(ep, EPOLL_CTL_DEL, server_stop_fd(), NULL);
            } else if (p == &listener) {
                session_t *s;
                while ((s = server_accept_session(lfd, &cfg)) != NULL) {
                    struct epoll_event a = {.events = EPOLLIN, .data.ptr = s};
                    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &a);
                    s->armed = EPOLLIN;
                    apply(s, SESS_READ);
                }
            } else if (ev & EPOLLIN) {
                apply(p, session_on_readable(p));
            } else if (ev & EPOLLOUT) {
                apply(p, session_on_writable(p));
            } else {
                apply(p, session_on_error(p));
            }
        }
        server_loop_timers(&timers, apply);
        server_loop_stop(&lfd, apply);
    }
    server_loop_end();
    return 0;
}
