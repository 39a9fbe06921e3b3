#include "reactor.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "metrics.h"
#include "net.h"

#define QUEUE_MAX 4096 /* BURNs waiting for a worker; more are refused */

/* A call to run on a loop thread (a finished BURN, a deferred answer). */
struct post {
    session_t *s;
    int (*fn)(session_t *s, void *arg);
    void *arg;
    struct post *next;
};

/* A connection owned by a loop: the session and its links in the loop's
 * list (to visit them all on shutdown). */
struct conn {
    session_t s;
    struct conn *prev, *next;
    int watched; /* registered with the loop's epoll */
};

typedef struct loop {
    int index, ep, lfd, wake; /* wake: eventfd the posts ring */
    timers_t timers;
    struct conn *conns;
    int nconns;
    pthread_mutex_t lock;  /* guards posts */
    struct post *posts;
    pthread_t thread;
} loop_t;

static server_cfg_t *config;
static const reactor_hooks_t *hooks;
static __thread int thread_index = -1;

/* The worker pool: a bounded ring of sessions waiting to BURN. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    session_t *ring[QUEUE_MAX];
    size_t head, len;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0};

int reactor_thread_index(void)
{
    return thread_index;
}

int reactor_post(session_t *s, int (*fn)(session_t *s, void *arg), void *arg)
{
    loop_t *L = s->owner;
    struct post *p = malloc(sizeof *p);
    uint64_t one = 1;
    if (!p)
        return -ENOMEM;
    *p = (struct post){s, fn, arg, NULL};
    pthread_mutex_lock(&L->lock);
    p->next = L->posts;
    L->posts = p;
    pthread_mutex_unlock(&L->lock);
    if (write(L->wake, &one, sizeof one) < 0) {
        /* the counter is already non-zero: the loop will wake anyway */
    }
    return 0;
}

static int burn_done(session_t *s, void *arg)
{
    (void)arg;
    return session_on_work_done(s);
}

static void *worker_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&pool.lock);
        while (pool.len == 0)
            pthread_cond_wait(&pool.ready, &pool.lock);
        session_t *s = pool.ring[pool.head];
        pool.head = (pool.head + 1) % QUEUE_MAX;
        pool.len--;
        pthread_mutex_unlock(&pool.lock);
        session_work_run(s);
        while (reactor_post(s, burn_done, NULL) < 0)
            usleep(1000); /* out of memory: the answer must still get back */
    }
    return NULL;
}

/* Queue s for a worker. Returns 0, or -EBUSY when the queue is full. */
static int submit(session_t *s)
{
    int rc = 0;
    pthread_mutex_lock(&pool.lock);
    if (pool.len == QUEUE_MAX) {
        rc = -EBUSY;
    } else {
        pool.ring[(pool.head + pool.len) % QUEUE_MAX] = s;
        pool.len++;
        pthread_cond_signal(&pool.ready);
    }
    pthread_mutex_unlock(&pool.lock);
    return rc;
}

static void conn_free(loop_t *L, struct conn *c)
{
    timers_set(&L->timers, &c->s.timer, 0);
    if (c->prev)
        c->prev->next = c->next;
    else
        L->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    L->nconns--;
    session_close(&c->s);
    free(c);
}

/* Tell epoll, the timer heap and the pool what the session wants next. */
static void apply(loop_t *L, session_t *s, int wants)
{
    struct conn *c = (struct conn *)s;
    /* A refusal answers and goes on: the next pipelined BURN may want a
     * worker in turn. */
    while ((wants & SESS_WORK) && submit(s) < 0)
        wants = session_on_work_refused(s);
    if (wants & SESS_CLOSE) {
        conn_free(L, c);
        return;
    }
    if (wants & SESS_GONE) {
        /* Dead, but a worker or an extension holds it: it stays in memory,
         * unwatched and without a timer, until their post comes back. */
        if (c->watched) {
            /* Cannot fail: the descriptor is open and registered. */
            (void)epoll_ctl(L->ep, EPOLL_CTL_DEL, s->fd, NULL);
            c->watched = 0;
        }
        timers_set(&L->timers, &s->timer, 0);
        return;
    }
    unsigned ev = ((wants & SESS_READ) ? EPOLLIN : 0) | ((wants & SESS_WRITE) ? EPOLLOUT : 0);
    if (ev != s->armed) {
        struct epoll_event e = {.events = ev, .data.ptr = s};
        epoll_ctl(L->ep, EPOLL_CTL_MOD, s->fd, &e);
        s->armed = ev;
    }
    timers_set(&L->timers, &s->timer, session_deadline(s));
}

static void accept_all(loop_t *L)
{
    int fd;
    while ((fd = server_accept(L->lfd, config)) != -EAGAIN) {
        if (fd < 0) {
            if (fd == -ECONNREFUSED || fd == -EINTR || fd == -ECONNABORTED)
                continue;
            return; /* out of descriptors or memory: retry on the next wake-up */
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            metrics_conn(0);
            continue;
        }
        session_init(&c->s, fd, &config->session);
        c->s.owner = L;
        c->next = L->conns;
        if (L->conns)
            L->conns->prev = c;
        L->conns = c;
        L->nconns++;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &c->s};
        epoll_ctl(L->ep, EPOLL_CTL_ADD, fd, &e);
        c->watched = 1;
        c->s.armed = EPOLLIN;
        apply(L, &c->s, SESS_READ);
    }
}

static void run_posts(loop_t *L)
{
    uint64_t n;
    if (read(L->wake, &n, sizeof n) < 0) {
        /* nothing to read: another wake-up took it */
    }
    pthread_mutex_lock(&L->lock);
    struct post *p = L->posts;
    L->posts = NULL;
    pthread_mutex_unlock(&L->lock);
    while (p) {
        struct post *next = p->next;
        apply(L, p->s, p->fn(p->s, p->arg));
        free(p);
        p = next;
    }
}

static void *loop_main(void *arg)
{
    loop_t *L = arg;
    static int listener, waker, stopper; /* markers for the special descriptors */
    int64_t drain_until = 0, next_tick = 0;
    thread_index = L->index;
    if (hooks && hooks->thread_init && hooks->thread_init(L->index, hooks->ctx) < 0)
        return (void *)1;

    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &listener};
    epoll_ctl(L->ep, EPOLL_CTL_ADD, L->lfd, &e);
    e.data.ptr = &waker;
    epoll_ctl(L->ep, EPOLL_CTL_ADD, L->wake, &e);
    e.data.ptr = &stopper;
    epoll_ctl(L->ep, EPOLL_CTL_ADD, server_stop_fd(), &e);

    while (L->lfd >= 0 || (L->nconns > 0 && time_now_ms() < drain_until)) {
        struct epoll_event evs[256];
        int timeout = timers_timeout(&L->timers, time_now_ms());
        if (hooks && hooks->tick_ms && (timeout < 0 || timeout > hooks->tick_ms))
            timeout = hooks->tick_ms;
        if (L->lfd < 0 && (timeout < 0 || timeout > 100))
            timeout = 100; /* draining: look at the clock now and then */
        int n = epoll_wait(L->ep, evs, 256, timeout);
        time_update();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            unsigned ev = evs[i].events;
            if (p == &stopper)
                continue; /* handled below, after this batch */
            else if (p == &listener)
                accept_all(L);
            else if (p == &waker)
                run_posts(L);
            else if (ev & EPOLLIN)
                apply(L, p, session_on_readable(p));
            else if (ev & EPOLLOUT)
                apply(L, p, session_on_writable(p));
            else
                apply(L, p, session_on_error(p));
        }
        timer_node_t *t;
        while ((t = timers_expired(&L->timers, time_now_ms())) != NULL) {
            session_t *s = (session_t *)((char *)t - offsetof(session_t, timer));
            apply(L, s, session_on_timer(s));
        }
        if (hooks && hooks->tick_ms && time_now_ms() >= next_tick) {
            hooks->tick(L->index, hooks->ctx);
            next_tick = time_now_ms() + hooks->tick_ms;
        }
        if (server_stopping && L->lfd >= 0) {
            /* Stop accepting; what is in flight gets SERVER_DRAIN_MS. */
            epoll_ctl(L->ep, EPOLL_CTL_DEL, server_stop_fd(), NULL);
            close(L->lfd);
            L->lfd = -1;
            drain_until = time_now_ms() + SERVER_DRAIN_MS;
            struct conn *c = L->conns, *next;
            for (; c; c = next) {
                next = c->next;
                apply(L, &c->s, session_shutdown(&c->s));
            }
        }
    }
    return NULL;
}

int reactor_run(server_cfg_t *cfg, const reactor_hooks_t *h)
{
    int n = cfg->threads, port = cfg->port, status = 0;
    loop_t *loops = calloc((size_t)n, sizeof *loops);
    pthread_t tid;
    config = cfg;
    hooks = h;
    if (!loops) {
        fprintf(stderr, "server-%s: out of memory\n", cfg->design);
        return 1;
    }
    cfg->session.offload_min = REACTOR_OFFLOAD_MIN;
    for (int i = 0; i < n; i++) {
        loop_t *L = &loops[i];
        L->index = i;
        /* With port 0 the first socket picks a port; the others join it. */
        cfg->port = port;
        L->lfd = server_listen(cfg, NET_NONBLOCK | NET_REUSEPORT);
        if (i == 0 && port == 0)
            port = net_local_port(L->lfd);
        L->ep = epoll_create1(EPOLL_CLOEXEC);
        L->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        pthread_mutex_init(&L->lock, NULL);
        if (L->ep < 0 || L->wake < 0) {
            fprintf(stderr, "server-%s: %s\n", cfg->design, strerror(errno));
            return 1;
        }
    }
    cfg->port = port;
    for (int i = 0; i < cfg->workers; i++)
        if (pthread_create(&tid, NULL, worker_main, NULL) == 0)
            pthread_detach(tid);
    server_announce(cfg, loops[0].lfd);
    for (int i = 0; i < n; i++)
        pthread_create(&loops[i].thread, NULL, loop_main, &loops[i]);
    for (int i = 0; i < n; i++) {
        void *rc;
        pthread_join(loops[i].thread, &rc);
        if (rc)
            status = 1;
    }
    int busy = 0;
    for (int i = 0; i < n; i++) {
        loop_t *L = &loops[i];
        /* A connection whose BURN a worker still runs, or whose deferred
         * answer an extension still holds (they outlived the drain), is
         * left to the process exit, with its loop: a late reactor_post
         * must find them in memory. */
        struct conn *c = L->conns, *next;
        for (; c; c = next) {
            next = c->next;
            if (c->s.working || c->s.op == OP_DEFER)
                busy = 1;
            else
                conn_free(L, c);
        }
    }
    for (int i = 0; i < n && !busy; i++) {
        timers_free(&loops[i].timers);
        close(loops[i].ep);
    }
    if (!busy)
        free(loops);
    return status;
}
