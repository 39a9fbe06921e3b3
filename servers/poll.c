/* poll server - one thread serves every connection: non-blocking sockets,
 * readiness from poll(2), and WAITs kept as deadlines in a timer heap, so
 * no client waits for another's WAIT or slow reading.
 *
 * Unlike select there is no FD_SETSIZE ceiling: the array holds any
 * descriptor. But every wake-up still rebuilds it and the kernel scans it
 * whole: O(connections), which epoll avoids.
 * The chat's broadcast is shared state on one thread: a SAY appends the MSG
 * to each member's output and asks for POLLOUT; no lock.
 * Weakness: cost grows with idle connections; one core, and a long BURN
 * stalls everyone. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/chat.h"
#include "core/net.h"
#include "core/server.h"

/* Remember what the session wants (the array is rebuilt from it before each
 * poll) and file its deadline. */
static void apply(server_loop_t *L, session_t *s, int wants)
{
    if (wants & SESS_CLOSE) {
        server_session_free(L, s);
        return;
    }
    s->armed = (unsigned)wants;
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
    server_init(argc, argv, "poll", 0, &cfg);
    server_loop_t loop = {.lfd = server_listen(&cfg, NET_NONBLOCK)};
    if (loop.lfd < 0)
        return 1;
    if (!(cfg.session.chat = chat_new(CHAT_ONE_LOOP, chat_wake, &loop))) {
        fprintf(stderr, "server-poll: out of memory\n");
        return 1;
    }
    struct pollfd *pfd = NULL;
    size_t cap = 0;
    int status = 0;
    server_announce(&cfg, loop.lfd);

    while (server_loop_running(&loop)) {
        size_t n = 2, want = 2 + (size_t)loop.count;
        if (want > cap) {
            struct pollfd *p = realloc(pfd, want * 2 * sizeof *p);
            if (!p) {
                fprintf(stderr, "server-poll: out of memory\n");
                status = 1;
                break;
            }
            pfd = p;
            cap = want * 2;
        }
        /* fd -1 is ignored: after the stop, neither is watched any more. */
        pfd[0] = (struct pollfd){.fd = loop.lfd >= 0 ? server_stop_fd() : -1, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = loop.lfd, .events = POLLIN};
        for (int fd = 0; fd < loop.end; fd++) {
            session_t *s = server_session_at(&loop, fd);
            if (s)
                pfd[n++] =
                    (struct pollfd){.fd = fd,
                                    .events = (short)(((s->armed & SESS_READ) ? POLLIN : 0) |
                                                      ((s->armed & SESS_WRITE) ? POLLOUT : 0))};
        }
        int timeout = server_loop_timeout(&loop);
        int ready = poll(pfd, n, timeout);
        time_update();
        if (ready < 0 && errno != EINTR) {
            fprintf(stderr, "server-poll: poll: %s\n", strerror(errno));
            status = 1;
            break;
        }
        if (ready > 0) {
            for (size_t i = 2; i < n; i++) {
                session_t *s = server_session_at(&loop, pfd[i].fd);
                short ev = pfd[i].revents;
                if (!s || !ev)
                    continue;
                if (ev & POLLIN)
                    apply(&loop, s, session_on_readable(s));
                else if (ev & POLLOUT)
                    apply(&loop, s, session_on_writable(s));
                else
                    apply(&loop, s, session_on_error(s));
            }
            session_t *s;
            if (pfd[1].revents & POLLIN)
                while ((s = server_accept_session(&loop, &cfg)) != NULL)
                    apply(&loop, s, SESS_READ);
        }
        server_loop_timers(&loop, apply);
        server_loop_stop(&loop, apply);
    }
    server_loop_end(&loop);
    chat_free(cfg.session.chat);
    free(pfd);
    return status;
}
