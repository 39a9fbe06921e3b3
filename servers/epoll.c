/* epoll server - one thread serves every connection: non-blocking sockets,
 * readiness from epoll(7), and WAITs kept as deadlines in a timer heap, so
 * no client waits for another's WAIT or slow reading.
 *
 * The kernel keeps the interest set, so a wake-up costs O(ready), not
 * O(connections) as with select and poll.
 * The chat's broadcast is shared state on one thread: a SAY appends the MSG
 * to each member's output and arms its EPOLLOUT (an epoll_ctl per member,
 * then a write on its wake-up); no lock, no hand-off.
 * Weakness: one core, and a long BURN runs on the loop and stalls every
 * other client until it ends (the reactor hands BURN to workers). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/metrics.h"
#include "core/chat.h"
#include "core/net.h"
#include "core/server.h"

static int ep;

/* Tell epoll and the timer heap what the session wants next. */
static void apply(server_loop_t *L, session_t *s, int wants)
{
    if (wants & SESS_CLOSE) {
        server_session_free(L, s); /* close() also removes it from epoll */
        return;
    }
    unsigned ev = ((wants & SESS_READ) ? EPOLLIN : 0) | ((wants & SESS_WRITE) ? EPOLLOUT : 0);
    if (ev != s->armed) {
        struct epoll_event e = {.events = ev, .data.ptr = s};
        /* Cannot fail: the descriptor is open and registered. */
        (void)epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
        s->armed = ev;
    }
    /* Cannot fail: server_accept_session reserved the session's place. */
    (void)timers_set(&L->timers, &s->timer, session_deadline(s));
}

/* The chat's delivery (core/chat.h, CHAT_ONE_LOOP): SAY put a line in
 * member s's output; watch for its socket to be writable to send it. Every
 * member lives on this thread: the rooms are plain shared state, no lock. */
static void chat_wake(session_t *s, void *ctx)
{
    apply(ctx, s, (session_wants(s) & ~SESS_CLOSE) | SESS_WRITE);
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "epoll", 0, &cfg);
    server_loop_t loop = {.lfd = server_listen(&cfg, NET_NONBLOCK)};
    static int listener, stopper; /* markers for the two special descriptors */
    if (loop.lfd < 0)
        return 1;
    if (!(cfg.session.chat = chat_new(CHAT_ONE_LOOP, chat_wake, &loop))) {
        fprintf(stderr, "server-epoll: out of memory\n");
        return 1;
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &listener};
    struct epoll_event st = {.events = EPOLLIN, .data.ptr = &stopper};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, loop.lfd, &e) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, server_stop_fd(), &st) < 0) {
        fprintf(stderr, "server-epoll: epoll: %s\n", strerror(errno));
        return 1;
    }
    server_announce(&cfg, loop.lfd);

    while (server_loop_running(&loop)) {
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, server_loop_timeout(&loop));
        time_update();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            unsigned ev = evs[i].events;
            if (p == &stopper) { /* stays readable: handled once, below */
                /* Cannot fail: it is registered; at worst it wakes us again. */
                (void)epoll_ctl(ep, EPOLL_CTL_DEL, server_stop_fd(), NULL);
            } else if (p == &listener) {
                session_t *s;
                while ((s = server_accept_session(&loop, &cfg)) != NULL) {
                    struct epoll_event a = {.events = EPOLLIN, .data.ptr = s};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &a) < 0) {
                        /* Out of memory or of epoll watches: drop it. */
                        metrics_error(ME_ACCEPT);
                        server_session_free(&loop, s);
                        continue;
                    }
                    s->armed = EPOLLIN;
                    apply(&loop, s, SESS_READ);
                }
            } else if (ev & EPOLLIN) {
                apply(&loop, p, session_on_readable(p));
            } else if (ev & EPOLLOUT) {
                apply(&loop, p, session_on_writable(p));
            } else {
                apply(&loop, p, session_on_error(p));
            }
        }
        server_loop_timers(&loop, apply);
        server_loop_stop(&loop, apply);
    }
    server_loop_end(&loop);
    chat_free(cfg.session.chat);
    return 0;
}
