/* reactor: the reactor design's runtime (servers/reactor.c shows the
 * model), which the sandboxed server and the incrementor reuse with their
 * own requests and hooks (reactor.h).
 *
 * Each loop thread (loop_main) is an epoll loop like servers/epoll.c, on
 * the same server_loop_* helpers, with its own listening socket on the
 * shared port (SO_REUSEPORT), so the kernel spreads connections across the
 * loops and they share nothing on the request path. A long BURN is handed
 * to a worker thread (apply -> submit -> worker_main), and its answer comes
 * back to the loop that owns the connection (reactor_post -> the loop's
 * wake descriptor -> run_posts). */
#include "reactor.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "chat.h"
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

/* One loop per core: the epoll design's state, and the way in for the
 * other threads. Each session's `owner` is its loop. */
typedef struct loop {
    server_loop_t base;   /* listener, sessions, deadlines (first: see apply) */
    int index, ep, wake;  /* wake: an eventfd that posts ring */
    pthread_mutex_t lock; /* guards posts */
    struct post *posts;
    pthread_t thread;
} loop_t;

static server_cfg_t *config;
static const reactor_hooks_t *hooks;
static __thread int thread_index = -1;

/* The hand-off: a bounded ring of sessions waiting to BURN, and the workers
 * that take them. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    session_t *ring[QUEUE_MAX];
    size_t head, len;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0};

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

/* On the owning loop, once the worker is done. */
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

/* The way back: queue the call on the session's loop and ring its wake
 * descriptor; the loop runs it (run_posts) after its current batch. */
int reactor_post(session_t *s, int (*fn)(session_t *s, void *arg), void *arg)
{
    loop_t *L = s->owner;
    struct post *p = malloc(sizeof *p);
    uint64_t one = 1;
    if (!p)
        return -ENOMEM;
    *p = (struct post){s, fn, arg, NULL};
    pthread_mutex_lock(&L->lock);
    int first = L->posts == NULL;
    p->next = L->posts;
    L->posts = p;
    pthread_mutex_unlock(&L->lock);
    /* Only the first of a run rings: the loop takes the whole list after it
     * has read the ring (run_posts), so a post added to a list not yet
     * taken is run with it. A ring per post would wake the loop, and on a
     * busy core switch to it, once per answer of a batch. */
    if (first && write(L->wake, &one, sizeof one) < 0) {
        /* the counter is already non-zero: the loop will wake anyway */
    }
    return 0;
}

int reactor_thread_index(void)
{
    return thread_index;
}

/* Tell epoll, the timer heap and the workers what the session wants next. */
static void apply(server_loop_t *base, session_t *s, int wants)
{
    loop_t *L = (loop_t *)base; /* base is its first member */
    /* A refusal answers and goes on: the next pipelined BURN may want a
     * worker in turn. */
    while ((wants & SESS_WORK) && submit(s) < 0)
        wants = session_on_work_refused(s);
    if (wants & SESS_CLOSE) {
        server_session_free(base, s); /* close() also removes it from epoll */
        return;
    }
    if (wants & SESS_GONE) {
        /* Dead, but a worker or an extension holds it: it stays in memory,
         * unwatched and without a timer, until their post comes back. The
         * DEL fails only when it is out already (gone twice): nothing to do;
         * cancelling a deadline cannot fail. */
        (void)epoll_ctl(L->ep, EPOLL_CTL_DEL, s->fd, NULL);
        (void)timers_set(&base->timers, &s->timer, 0);
        session_cancel_work(s); /* its BURN, if not started, is not run */
        return;
    }
    unsigned ev = ((wants & SESS_READ) ? EPOLLIN : 0) | ((wants & SESS_WRITE) ? EPOLLOUT : 0);
    /* A session waiting for its answer (a deferred request, a BURN at a
     * worker) stays armed for input: its client sends nothing meanwhile, so
     * no event comes, and the two epoll_ctl calls that disarming and
     * re-arming would cost each such request are saved. Input that does
     * come (a pipelining client) disarms it then (input_while_held). */
    if (session_held(s))
        ev |= s->armed & EPOLLIN;
    if (ev != s->armed) {
        struct epoll_event e = {.events = ev, .data.ptr = s};
        /* Cannot fail: the descriptor is open and registered. */
        (void)epoll_ctl(L->ep, EPOLL_CTL_MOD, s->fd, &e);
        s->armed = ev;
    }
    /* Cannot fail: server_accept_session reserved the session's place. */
    (void)timers_set(&base->timers, &s->timer, session_deadline(s));
}

/* An event on a session that does not want input: armed for input while
 * held (apply), its client sent more, or went away. Stop watching its
 * input until its answer is back; an error or hang-up kills it as it
 * would have without input armed; and output still flows. */
static void input_while_held(loop_t *L, session_t *s, unsigned ev)
{
    if (ev & (EPOLLERR | EPOLLHUP)) {
        apply(&L->base, s, session_on_error(s));
        return;
    }
    struct epoll_event e = {.events = s->armed & ~(unsigned)EPOLLIN, .data.ptr = s};
    /* Cannot fail: the descriptor is open and registered. */
    (void)epoll_ctl(L->ep, EPOLL_CTL_MOD, s->fd, &e);
    s->armed = e.events;
    if (ev & EPOLLOUT)
        apply(&L->base, s, session_on_writable(s));
}

/* The chat's delivery on this loop (core/chat.h, CHAT_LOOPS): member s got
 * lines in its output; watch for its socket to be writable. */
static void chat_wake(session_t *s, void *ctx)
{
    (void)ctx;
    apply(&((loop_t *)s->owner)->base, s, (session_wants(s) & ~SESS_CLOSE) | SESS_WRITE);
}

/* Accept every pending connection; counts the wake-up (metrics_listener_wakeup). */
static void accept_all(loop_t *L)
{
    session_t *s;
    int accepted = 0;
    while ((s = server_accept_session(&L->base, config)) != NULL) {
        accepted = 1;
        s->owner = L;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = s};
        if (epoll_ctl(L->ep, EPOLL_CTL_ADD, s->fd, &e) < 0) {
            /* Out of memory or of epoll watches: drop it. */
            metrics_error(ME_ACCEPT);
            server_session_free(&L->base, s);
            continue;
        }
        s->armed = EPOLLIN;
        apply(&L->base, s, SESS_READ);
    }
    metrics_listener_wakeup(accepted);
}

/* Run the calls other threads posted to this loop (the answers coming back). */
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
        apply(&L->base, p->s, p->fn(p->s, p->arg));
        free(p);
        p = next;
    }
}

/* A loop that cannot serve stops the whole server, as SIGTERM would: its
 * listening socket would otherwise take connections nobody accepts. */
static void *loop_fail(loop_t *L, const char *what, int err)
{
    fprintf(stderr, "server-%s: loop %d: %s: %s\n", config->design, L->index, what, strerror(err));
    raise(SIGTERM);
    close(L->base.lfd);
    L->base.lfd = -1;
    return (void *)1;
}

/* One loop thread: the epoll loop, plus the posts coming back. */
static void *loop_main(void *arg)
{
    loop_t *L = arg;
    static int listener, waker, stopper, chatter; /* markers for the special descriptors */
    int64_t next_tick = 0;
    int rc;
    thread_index = L->index;
    chat_loop_bind(L->index);
    metrics_loop(L->index); /* /metrics shows how SO_REUSEPORT spread the connections */
    if (hooks && hooks->thread_init && (rc = hooks->thread_init(L->index, hooks->ctx)) < 0)
        return loop_fail(L, "thread init", -rc);

    struct epoll_event e[4] = {{.events = EPOLLIN, .data.ptr = &listener},
                               {.events = EPOLLIN, .data.ptr = &waker},
                               {.events = EPOLLIN, .data.ptr = &stopper},
                               {.events = EPOLLIN, .data.ptr = &chatter}};
    if (epoll_ctl(L->ep, EPOLL_CTL_ADD, L->base.lfd, &e[0]) < 0 ||
        epoll_ctl(L->ep, EPOLL_CTL_ADD, L->wake, &e[1]) < 0 ||
        epoll_ctl(L->ep, EPOLL_CTL_ADD, server_stop_fd(), &e[2]) < 0 ||
        epoll_ctl(L->ep, EPOLL_CTL_ADD, chat_loop_fd(config->session.chat, L->index), &e[3]) < 0)
        return loop_fail(L, "epoll", errno);

    while (server_loop_running(&L->base)) {
        struct epoll_event evs[256];
        int timeout = server_loop_timeout(&L->base);
        if (hooks && hooks->tick_ms && (timeout < 0 || timeout > hooks->tick_ms))
            timeout = hooks->tick_ms;
        int n = epoll_wait(L->ep, evs, 256, timeout), posted = 0, chatted = 0;
        time_update();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            unsigned ev = evs[i].events;
            if (p == &stopper) /* stays readable: handled once, below */
                /* Cannot fail: it is registered; at worst it wakes us again. */
                (void)epoll_ctl(L->ep, EPOLL_CTL_DEL, server_stop_fd(), NULL);
            else if (p == &listener)
                accept_all(L);
            else if (p == &waker)
                posted = 1; /* after the batch: see below */
            else if (p == &chatter)
                chatted = 1; /* lines of other loops' SAYs, after the batch too */
            else if ((ev & EPOLLIN) && !(session_wants(p) & SESS_READ))
                input_while_held(L, p, ev);
            else if (ev & EPOLLIN)
                apply(&L->base, p, session_on_readable(p));
            else if (ev & EPOLLOUT)
                apply(&L->base, p, session_on_writable(p));
            else
                apply(&L->base, p, session_on_error(p));
        }
        /* Posts only now: a post may free any session of this loop (its
         * work is back and its peer gone), and this batch may still hold
         * an event for it. Each event frees at most its own session. */
        if (posted)
            run_posts(L);
        if (chatted)
            chat_loop_run(config->session.chat, L->index);
        server_loop_timers(&L->base, apply);
        if (hooks && hooks->tick_ms && time_now_ms() >= next_tick) {
            hooks->tick(L->index, hooks->ctx);
            next_tick = time_now_ms() + hooks->tick_ms;
        }
        server_loop_stop(&L->base, apply);
    }
    return NULL;
}

int reactor_run(server_cfg_t *cfg, const reactor_hooks_t *h)
{
    int n = cfg->threads, port = cfg->port, status = 0, workers = 0, started = 0;
    loop_t *loops = calloc((size_t)n, sizeof *loops);
    pthread_t tid;
    config = cfg;
    hooks = h;
    if (!loops) {
        fprintf(stderr, "server-%s: out of memory\n", cfg->design);
        return 1;
    }
    cfg->session.offload_min = REACTOR_OFFLOAD_MIN;
    /* The chat: posts between the loops (core/chat.h, CHAT_LOOPS). */
    if (!(cfg->session.chat = chat_new_loops(n, chat_wake, NULL))) {
        fprintf(stderr, "server-%s: chat: %s\n", cfg->design, strerror(errno));
        return 1;
    }
    /* One loop per core, each with its own listening socket on the port. */
    for (int i = 0; i < n; i++) {
        loop_t *L = &loops[i];
        L->index = i;
        /* With port 0 the first socket picks a port; the others join it. */
        cfg->port = port;
        if ((L->base.lfd = server_listen(cfg, NET_NONBLOCK | NET_REUSEPORT)) < 0)
            return 1; /* why is printed; the process exits */
        if (i == 0 && port == 0)
            port = net_local_port(L->base.lfd);
        L->ep = epoll_create1(EPOLL_CLOEXEC);
        L->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (L->ep < 0 || L->wake < 0) {
            fprintf(stderr, "server-%s: %s\n", cfg->design, strerror(errno));
            return 1;
        }
        /* Cannot fail: default attributes. */
        (void)pthread_mutex_init(&L->lock, NULL);
    }
    cfg->port = port;
    /* The workers for the long BURNs: fewer than asked still serve (a
     * shorter queue drains slower); none would leave every BURN queued. */
    for (int i = 0; i < cfg->workers; i++)
        if (pthread_create(&tid, NULL, worker_main, NULL) == 0) {
            (void)pthread_detach(tid); /* cannot fail: it is joinable */
            workers++;
        }
    if (!workers) {
        fprintf(stderr, "server-%s: cannot start a worker thread\n", cfg->design);
        return 1;
    }
    server_announce(cfg, loops[0].base.lfd);
    for (; started < n; started++) {
        int e = pthread_create(&loops[started].thread, NULL, loop_main, &loops[started]);
        if (e) {
            /* Stop those running; this loop's socket must not take more. */
            fprintf(stderr, "server-%s: cannot start loop %d: %s\n", cfg->design, started,
                    strerror(e));
            raise(SIGTERM);
            close(loops[started].base.lfd);
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
    /* A connection whose BURN a worker still runs, or whose deferred answer
     * an extension still holds (they outlived the drain), is left to the
     * process exit, with its loop: a late reactor_post must find them in
     * memory. */
    int busy = 0;
    for (int i = 0; i < n; i++)
        busy += server_loop_end(&loops[i].base);
    if (!busy) {
        for (int i = 0; i < n; i++) {
            close(loops[i].ep);
            close(loops[i].wake);
        }
        free(loops);
        chat_free(cfg->session.chat);
        cfg->session.chat = NULL;
    }
    return status;
}
