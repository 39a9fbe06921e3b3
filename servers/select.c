/* select server - one thread serves every connection: non-blocking sockets,
 * readiness from select(2), and WAITs kept as deadlines in a timer heap, so
 * no client waits for another's WAIT or slow reading.
 *
 * Every wake-up rebuilds the descriptor sets and scans them: O(connections).
 * The chat's broadcast is shared state on one thread: a SAY appends the MSG
 * to each member's output and asks for its write set; no lock.
 * Weakness: an fd_set only holds descriptors below FD_SETSIZE (1024), so
 * connections that would get a larger one are refused with 503 (setting a
 * bit past the set is undefined behaviour). One core, and a long BURN stalls
 * everyone. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "core/chat.h"
#include "core/net.h"
#include "core/server.h"

/* Remember what the session wants (the sets are rebuilt from it before each
 * select) and file its deadline. */
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
    server_init(argc, argv, "select", 0, &cfg);
    cfg.max_fd = FD_SETSIZE;
    server_loop_t loop = {.lfd = server_listen(&cfg, NET_NONBLOCK)};
    if (loop.lfd < 0)
        return 1;
    if (!(cfg.session.chat = chat_new(CHAT_ONE_LOOP, chat_wake, &loop))) {
        fprintf(stderr, "server-select: out of memory\n");
        return 1;
    }
    int status = 0;
    server_announce(&cfg, loop.lfd);

    while (server_loop_running(&loop)) {
        fd_set rd, wr;
        FD_ZERO(&rd);
        FD_ZERO(&wr);
        int maxfd = -1;
        if (loop.lfd >= 0) { /* the stop descriptor stays readable: only until the stop */
            FD_SET(server_stop_fd(), &rd);
            FD_SET(loop.lfd, &rd);
            maxfd = loop.lfd > server_stop_fd() ? loop.lfd : server_stop_fd();
        }
        for (int fd = 0; fd < loop.end; fd++) {
            session_t *s = server_session_at(&loop, fd);
            if (!s)
                continue;
            if (s->armed & SESS_READ)
                FD_SET(fd, &rd);
            if (s->armed & SESS_WRITE)
                FD_SET(fd, &wr);
            maxfd = fd > maxfd ? fd : maxfd;
        }
        int timeout = server_loop_timeout(&loop);
        struct timeval tv = {timeout / 1000, (timeout % 1000) * 1000};
        int n = select(maxfd + 1, &rd, &wr, NULL, timeout < 0 ? NULL : &tv);
        time_update();
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "server-select: select: %s\n", strerror(errno));
            status = 1;
            break;
        }
        if (n > 0) {
            for (int fd = 0; fd < loop.end; fd++) {
                session_t *s = server_session_at(&loop, fd);
                if (!s)
                    continue;
                if (FD_ISSET(fd, &rd))
                    apply(&loop, s, session_on_readable(s));
                else if (FD_ISSET(fd, &wr))
                    apply(&loop, s, session_on_writable(s));
            }
            session_t *s;
            if (loop.lfd >= 0 && FD_ISSET(loop.lfd, &rd))
                while ((s = server_accept_session(&loop, &cfg)) != NULL)
                    apply(&loop, s, SESS_READ);
        }
        server_loop_timers(&loop, apply);
        server_loop_stop(&loop, apply);
    }
    server_loop_end(&loop);
    chat_free(cfg.session.chat);
    return status;
}
