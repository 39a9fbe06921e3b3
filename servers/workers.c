/* workers server - N threads (--threads), each an epoll loop of its own, all
 * watching one shared listening socket.
 *
 * The model, step by step:
 *   - main opens one listening socket and starts --threads threads; each
 *     has its own epoll and its own descriptor of that socket (dup);
 *   - each thread registers the socket with EPOLLEXCLUSIVE: when a
 *     connection arrives, the kernel wakes one thread waiting in epoll_wait
 *     (at least one, seldom more), not every one; without it
 *     (--no-exclusive) it wakes them all, and all but the first find the
 *     queue drained: the thundering herd (most of them go back to sleep
 *     inside epoll_wait, unseen here: scripts/lab workers counts them in
 *     the threads' context switches);
 *   - the thread that accepts a connection serves it to its end: from there
 *     it is the epoll design (servers/epoll.c, the same server_loop_*
 *     helpers), a BURN included, which runs inline on that thread;
 *   - the chat's broadcast crosses threads as in the reactor: a SAY
 *     delivers to its own thread's members and posts the line once to each
 *     other thread with members in the room (core/chat.h, CHAT_LOOPS);
 *   - /metrics counts, per thread, the connections it accepted, its
 *     wake-ups on the listener, and those that accepted nothing.
 * Against the reactor (servers/reactor.c): it has a listening socket per
 * loop on the same port (SO_REUSEPORT), and the kernel hashes each
 * connection to one of them, whether that loop is busy or not; here there
 * is one accept queue, and a connection goes to whichever thread the
 * kernel wakes, which then takes every connection waiting. A busy thread
 * is passed over, so a new client never waits behind another's BURN.
 * Weakness: the spread is whatever the wake-ups make it. EPOLLEXCLUSIVE
 * wakes the first idle thread in the socket's wait queue, the same one
 * whenever it is idle, and that thread drains the queue: at a low rate one
 * thread takes every connection, and a burst piles onto a few. A
 * connection stays on its thread, and a long BURN stalls the other
 * clients of that thread. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/chat.h"
#include "core/metrics.h"
#include "core/net.h"
#include "core/server.h"

/* One thread: the epoll design's loop, on a descriptor of the shared socket. */
typedef struct worker {
    server_loop_t loop;
    int index;
    pthread_t thread;
} worker_t;

static server_cfg_t cfg;
static __thread int ep;                   /* this thread's epoll */
static __thread server_loop_t *this_loop; /* and its loop */

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

/* The chat's delivery on this thread (core/chat.h, CHAT_LOOPS, as in the
 * reactor): member s got lines in its output; watch for it to be writable. */
static void chat_wake(session_t *s, void *ctx)
{
    (void)ctx;
    apply(this_loop, s, (session_wants(s) & ~SESS_CLOSE) | SESS_WRITE);
}

/* A thread that cannot serve stops the server, as SIGTERM would. */
static void *fail(worker_t *W, const char *what, int err)
{
    fprintf(stderr, "server-workers: thread %d: %s: %s\n", W->index, what, strerror(err));
    raise(SIGTERM);
    if (ep >= 0)
        close(ep);
    close(W->loop.lfd);
    W->loop.lfd = -1;
    return (void *)1;
}

static void *worker_main(void *arg)
{
    worker_t *W = arg;
    server_loop_t *loop = &W->loop;
    static int listener, stopper, chatter; /* markers for the special descriptors */
    char name[16];
    metrics_loop(W->index);
    this_loop = loop;
    chat_loop_bind(W->index);
    /* "workers-N" in /proc/PID/task/TID/comm: the lab reads each thread's
     * context switches there (its wake-ups, counted by the kernel). */
    snprintf(name, sizeof name, "workers-%d", W->index);
    (void)pthread_setname_np(pthread_self(), name); /* only a name: either way */

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN | (cfg.no_exclusive ? 0 : EPOLLEXCLUSIVE),
                            .data.ptr = &listener};
    struct epoll_event st = {.events = EPOLLIN, .data.ptr = &stopper};
    struct epoll_event ch = {.events = EPOLLIN, .data.ptr = &chatter};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, loop->lfd, &e) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, server_stop_fd(), &st) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, chat_loop_fd(cfg.session.chat, W->index), &ch) < 0)
        return fail(W, "epoll", errno);

    while (server_loop_running(loop)) {
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, server_loop_timeout(loop)), chatted = 0;
        time_update();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            unsigned ev = evs[i].events;
            if (p == &stopper) { /* stays readable: handled once, below */
                /* Cannot fail: it is registered; at worst it wakes us again. */
                (void)epoll_ctl(ep, EPOLL_CTL_DEL, server_stop_fd(), NULL);
            } else if (p == &chatter) {
                chatted = 1; /* other threads' SAYs: after the batch */
            } else if (p == &listener) {
                session_t *s;
                int accepted = 0;
                while ((s = server_accept_session(loop, &cfg)) != NULL) {
                    struct epoll_event a = {.events = EPOLLIN, .data.ptr = s};
                    accepted = 1;
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &a) < 0) {
                        /* Out of memory or of epoll watches: drop it. */
                        metrics_error(ME_ACCEPT);
                        server_session_free(loop, s);
                        continue;
                    }
                    s->armed = EPOLLIN;
                    apply(loop, s, SESS_READ);
                }
                metrics_listener_wakeup(accepted); /* none: another thread was first */
            } else if (ev & EPOLLIN) {
                apply(loop, p, session_on_readable(p));
            } else if (ev & EPOLLOUT) {
                apply(loop, p, session_on_writable(p));
            } else {
                apply(loop, p, session_on_error(p));
            }
        }
        if (chatted)
            chat_loop_run(cfg.session.chat, W->index);
        server_loop_timers(loop, apply);
        /* The socket outlives our descriptor while the other threads hold
         * theirs, and epoll forgets a socket only when it is closed for
         * good: take it out first, or it would go on waking this loop. */
        if (server_stopping && loop->lfd >= 0) {
            (void)epoll_ctl(ep, EPOLL_CTL_DEL, loop->lfd, NULL); /* cannot fail: registered */
            server_loop_stop(loop, apply);
        }
    }
    server_loop_end(loop);
    close(ep);
    return NULL;
}

int main(int argc, char **argv)
{
    server_init(argc, argv, "workers", SERVER_OPT_THREADS | SERVER_OPT_EXCL, &cfg);
    int n = cfg.threads, started = 0, status = 0, dups = 0;
    int lfd = server_listen(&cfg, NET_NONBLOCK);
    worker_t *workers = calloc((size_t)n, sizeof *workers);
    if (lfd < 0 || !workers)
        goto err;
    if (!(cfg.session.chat = chat_new_loops(n, chat_wake, NULL))) {
        fprintf(stderr, "server-workers: chat: %s\n", strerror(errno));
        goto err;
    }
    /* A descriptor of the one socket per thread: each loop closes its own
     * when it stops (server_loop_stop), and the socket goes with the last. */
    for (; dups < n; dups++) {
        workers[dups].index = dups;
        if ((workers[dups].loop.lfd = fcntl(lfd, F_DUPFD_CLOEXEC, 0)) < 0) {
            fprintf(stderr, "server-workers: %s\n", strerror(errno));
            goto err;
        }
    }
    server_announce(&cfg, lfd);
    close(lfd);
    for (; started < n; started++) {
        int e = pthread_create(&workers[started].thread, NULL, worker_main, &workers[started]);
        if (e) {
            /* Stop those running: a server short of threads is not what was asked. */
            fprintf(stderr, "server-workers: cannot start thread %d: %s\n", started, strerror(e));
            raise(SIGTERM);
            status = 1;
            break;
        }
    }
    for (int i = started; i < n; i++)
        close(workers[i].loop.lfd);
    for (int i = 0; i < started; i++) {
        void *rc;
        (void)pthread_join(workers[i].thread, &rc); /* cannot fail: joinable, not us */
        if (rc)
            status = 1;
    }
    free(workers);
    chat_free(cfg.session.chat);
    return status;
err: /* why is printed (server_listen, or above; calloc: below) */
    if (lfd >= 0 && !workers)
        fprintf(stderr, "server-workers: out of memory\n");
    for (int i = 0; i < dups; i++)
        close(workers[i].loop.lfd);
    if (lfd >= 0)
        close(lfd);
    free(workers);
    chat_free(cfg.session.chat);
    return 1;
}
