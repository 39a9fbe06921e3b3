/* proxy server - a reverse proxy: what the client sends goes on to an
 * upstream server (--upstream, round robin), and its answers come back.
 *
 * The model, step by step:
 *   - one epoll loop per core (--threads), each with its own listening
 *     socket on the shared port (SO_REUSEPORT), as the reactor's;
 *   - each loop keeps, per upstream, a pool of idle keep-alive connections
 *     (pool_get, pool_put): a client connection borrows one when a request
 *     arrives and gives it back once every answer is through, so a request
 *     costs no TCP handshake to the upstream (across a WAN, a round trip);
 *   - bytes are relayed both ways by one function, pump, which moves what
 *     it can: client -> its input -> parsed, checked and rewritten request
 *     heads (hop-by-hop fields out, Via and X-Forwarded-For in) and bodies
 *     -> the upstream; the upstream -> answers, likewise -> the client.
 *     Pipelined requests go on, in order, on the borrowed connection, so
 *     their answers come back in order; behind a long answer, a near
 *     upstream gets the next one only once that answer is in, so that one
 *     client's answers do not go out in one burst ahead of the others';
 *   - backpressure: each buffer has a ceiling, and a side is read only
 *     while the buffer its bytes go to has room, so a slow client slows its
 *     upstream's reading (TCP does the rest), not the proxy's memory;
 *   - sockets are registered once, edge-triggered for both directions: a
 *     request costs four system calls (read, write, read, write) besides
 *     the shared epoll_wait; within a long batch of events, the loop looks
 *     again every few events and serves a client's new request at once
 *     (catch_up), so that no request waits for a burst of others' answers;
 *   - a long answer body of known length is read straight into the
 *     client's buffer (its head read alone): one copy in, one out. With
 *     --splice it goes from the upstream's socket to a pipe to the
 *     client's socket instead, the kernel moving its pages (less for the
 *     proxy, more for an upstream and a client on the same machine).
 * This file is the loops; the relay (connections, pools, pump, the heads'
 * rewriting) is servers/core/relay.c.
 * Weakness: a connection belongs to one loop; an upstream connection
 * serves one client at a time (HTTP/1.1 has no multiplexing), so a slow
 * answer holds its connection. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/net.h"
#include "core/relay.h"
#include "core/server.h"

typedef struct loop {
    relay_loop_t *relay;
    int lfd;             /* its own listening socket, -1 once stopping */
    int64_t drain_until; /* stopping: when the clients left are closed */
    pthread_t thread;
} loop_t;

#define BATCH      256 /* events a wait takes at most */
#define CATCH_UP_N 8   /* events served between two looks for new requests */

static server_cfg_t cfg;
static int listener, stopper; /* markers for the two descriptors that are not the relay's */

static void accept_all(loop_t *L)
{
    for (;;) {
        int fd = server_accept(L->lfd, &cfg);
        if (fd == -ECONNREFUSED)
            continue; /* over --max-conns: answered 503 */
        if (fd < 0)
            return;
        relay_accept(L->relay, fd);
    }
}

/* Within a batch of *n events: take those that came since it was taken.
 * A client's that starts a request is served now; the others join the
 * batch's end (the wait takes no more than the batch has room for).
 * Returns how many were served: a look that served none is the batch's
 * last (see loop_main).
 *
 * Why: behind a far upstream, answers come in bursts, and a burst of 64
 * took the loop 1.3 ms when the client link's emulator shared its CPU (each
 * answer written woke it, 21 us of wall time an answer against 9 of CPU).
 * A client's next request, come meanwhile, waited for the burst's end and
 * went on with the others': 64 closed-loop clients stayed in lockstep, each
 * request waiting for the others' answers (bench's 20ms-1k-c64, that CPU
 * placement, 3 rounds: p50 21.9-22.0 ms and 2,901-2,949 req/s; served at
 * once, 20.6-20.9 ms and 3,038-3,095, HAProxy 20.5-20.9 and 3,082-3,119).
 * Between two looks, 8 events: looking after each 2 or 4 did no better
 * there, and costs a system call more per few events on a busy loop.
 * Only requests go first: taking every new event first kept a pipelining
 * client's older events waiting (loopback, 16 pipelined: p99 1.7-2.5 ms
 * against 1.3). */
static int catch_up(relay_loop_t *R, struct epoll_event *evs, int *n)
{
    int base = *n, m = BATCH - base > 0 ? epoll_wait(R->ep, evs + base, BATCH - base, 0) : 0;
    int served = 0;
    for (int j = 0; j < m; j++) { /* *n <= base + j: no event is overwritten before it is read */
        struct epoll_event ev = evs[base + j];
        void *p = ev.data.ptr;
        if (p != &listener && p != &stopper && relay_starts(p)) {
            relay_event(R, p, ev.events);
            served++;
        } else {
            evs[(*n)++] = ev;
        }
    }
    return served;
}

/* One loop: the epoll design's, over the listener, the stop, and the
 * relay's sockets. */
static void *loop_main(void *arg)
{
    loop_t *L = arg;
    relay_loop_t *R = L->relay;
    struct epoll_event a = {.events = EPOLLIN, .data.ptr = &listener};
    struct epoll_event st = {.events = EPOLLIN, .data.ptr = &stopper};
    if (epoll_ctl(R->ep, EPOLL_CTL_ADD, L->lfd, &a) < 0 ||
        epoll_ctl(R->ep, EPOLL_CTL_ADD, server_stop_fd(), &st) < 0) {
        fprintf(stderr, "server-proxy: epoll: %s\n", strerror(errno));
        raise(SIGTERM);
        return (void *)1;
    }
    time_update();
    while (L->lfd >= 0 || (relay_clients(R) && time_now_ms() < L->drain_until)) {
        struct epoll_event evs[BATCH];
        int timeout = relay_timeout(R);
        if (L->lfd < 0 && (timeout < 0 || timeout > 100))
            timeout = 100;
        int n = epoll_wait(R->ep, evs, BATCH, timeout);
        time_update();
        /* Looking again pays while it finds requests: behind a far
         * upstream's 64 KiB answers most looks found only the answers'
         * events, and looking on cost 87 us of CPU an answer against 81
         * without looks; stopping at the first fruitless one, 83 (medians
         * of 5 alternating rounds), and 20ms-1k-c64 kept its gain. */
        int looking = 1;
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &listener) {
                accept_all(L);
            } else if (p == &stopper) { /* SIGTERM: no more connections; drain */
                /* Cannot fail: it is registered; at worst it wakes us again. */
                (void)epoll_ctl(R->ep, EPOLL_CTL_DEL, server_stop_fd(), NULL);
                close(L->lfd);
                L->lfd = -1;
                L->drain_until = time_now_ms() + SERVER_DRAIN_MS;
                relay_stop(R);
            } else {
                relay_event(R, p, evs[i].events);
            }
            if (looking && (i + 1) % CATCH_UP_N == 0 && i + 1 < n)
                looking = catch_up(R, evs, &n) > 0;
        }
        relay_timers(R);
    }
    relay_end(R);
    close(R->ep);
    return NULL;
}

int main(int argc, char **argv)
{
    server_init(argc, argv, "proxy", SERVER_OPT_THREADS | SERVER_OPT_UPSTREAM, &cfg);
    if (cfg.n_upstreams == 0) {
        fprintf(stderr, "server-proxy: --upstream HOST:PORT is required\n");
        return 2;
    }
    /* Each client may hold an upstream connection: two descriptors. With
     * --splice, also a pipe for a long body (two more): then the clients
     * get two thirds of the descriptors and the pipes the rest (relay_init),
     * one client in two at most. */
    struct rlimit rl;
    if (!cfg.max_conns && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        cfg.max_conns = (int)((rl.rlim_cur - SERVER_FD_RESERVE) / (cfg.splice ? 3 : 2));
    int n = cfg.threads;
    relay_loop_t *relays = relay_init(&cfg, n);
    if (!relays)
        return 2;
    loop_t *loops = calloc((size_t)n, sizeof *loops);
    if (!loops)
        return 1;
    int port = cfg.port, status = 0, started = 0;
    for (int i = 0; i < n; i++) {
        loop_t *L = &loops[i];
        server_cfg_t c = cfg;
        c.port = port;
        L->relay = &relays[i];
        L->lfd = server_listen(&c, NET_NONBLOCK | NET_REUSEPORT);
        L->relay->ep = epoll_create1(EPOLL_CLOEXEC);
        if (L->lfd < 0 || L->relay->ep < 0) {
            fprintf(stderr, "server-proxy: cannot set up loop %d\n", i);
            return 1;
        }
        port = net_local_port(L->lfd); /* the others join the port the first got */
    }
    cfg.port = port;
    server_announce(&cfg, loops[0].lfd);
    for (; started < n; started++) {
        int e = pthread_create(&loops[started].thread, NULL, loop_main, &loops[started]);
        if (e) {
            fprintf(stderr, "server-proxy: cannot start loop %d: %s\n", started, strerror(e));
            raise(SIGTERM);
            status = 1;
            break;
        }
    }
    for (int i = 0; i < started; i++) {
        void *rc;
        (void)pthread_join(loops[i].thread, &rc); /* cannot fail: joinable, not us */
        if (rc)
            status = 1;
    }
    free(loops);
    return status;
}
