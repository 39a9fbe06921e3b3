#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stddef.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "chat.h"
#include "coro.h"
#include "metrics.h"
#include "net.h"
#include "opt.h"
#include "proto.h"

/* How often the event loops give freed memory back to the system. */
#define TRIM_MS 5000

int server_stop_flag;
static int stop_fd = -1;
static __thread int spare_fd = -1;
/* The connection cap when --max-conns is not given (0: none). */
static uint64_t default_max_conns;

static void on_signal(int sig)
{
    (void)sig;
    uint64_t one = 1;
    int saved = errno;
    __atomic_store_n(&server_stop_flag, 1, __ATOMIC_RELEASE); /* lock-free: safe here */
    if (stop_fd >= 0 && write(stop_fd, &one, sizeof one) < 0) {
        /* the counter is already non-zero: nothing to do */
    }
    errno = saved;
}

int server_stop_fd(void)
{
    return stop_fd;
}

/* Where a design's optional flag is refused: the reason, or NULL when the
 * design takes it (opts has its SERVER_OPT_ bit). */
static const char *unless(unsigned opts, unsigned bit)
{
    return opts & bit ? NULL : "does not apply to this design";
}

/* --upstream's value: HOST:PORT with a port from 1 to 65535 (the host is
 * resolved when the proxy starts). */
static int check_upstream(const char *val, void *dst, char *err, size_t errlen)
{
    (void)dst;
    const char *colon = strrchr(val, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || colon == val || colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
        snprintf(err, errlen, "want HOST:PORT");
        return -EINVAL;
    }
    return 0;
}

static void server_defaults(server_cfg_t *cfg, const char *design)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    memset(cfg, 0, sizeof *cfg);
    cfg->design = design;
    cfg->host = "127.0.0.1";
    cfg->port = 8090;
    cfg->threads = cfg->workers = ncpu > 0 ? (int)ncpu : 1;
    cfg->stack_kb = 256;
    cfg->tenant_mem_kb = 4096;
    cfg->tenant_ms = 100;
    cfg->upstream_keepalive = 64;
    cfg->upstream_idle_ms = 60000;
    cfg->upstream_timeout_ms = 30000;
    session_cfg_default(&cfg->session);
}

void server_init(int argc, char **argv, const char *design, unsigned opts, server_cfg_t *cfg)
{
    server_defaults(cfg, design);
    session_cfg_t *s = &cfg->session;
    int no_splice = 0; /* copying is the default: kept so that older command lines still run */
    opt_t table[] = {
        OPT_STRING_E("host", 0, &cfg->host, NULL, "ADDR", "address to listen on (127.0.0.1)"),
        OPT_INT_E("port", 0, &cfg->port, 0, 65535, "N", "port, 0 for any free one (8090)"),
        OPT_INT_E("max-conns", 0, &cfg->max_conns, 0, 10000000, "N",
                  "refuse connections beyond N with 503\n"
                  "(default: the descriptor limit less 64)"),
        OPT_INT_E("header-timeout-ms", 0, &s->header_timeout_ms, 0, 86400000, "N",
                  "close a connection whose request is not complete\n"
                  "within N ms, 0 = never (10000)"),
        OPT_INT_E("idle-timeout-ms", 0, &s->idle_timeout_ms, 0, 86400000, "N",
                  "close a connection silent for N ms, 0 = never (60000)"),
        OPT_INT_E("burn-max", 0, &s->burn_max, 0, PROTO_BURN_MAX * 100, "N",
                  "largest BURN accepted (10000000000)"),
        OPT_FLAG_E("write-each", 0, &s->write_each,
                   "one write per answer instead of one per batch (lab)"),
        OPT_INT_E("threads", 0, &cfg->threads, 1, 1024, "N", "event loops (online CPUs)"),
        OPT_INT_E("workers", 0, &cfg->workers, 1, 1024, "N", "BURN worker threads (online CPUs)"),
        OPT_SIZE_E("stack-kb", 0, &cfg->stack_kb, 1024, 16 << 10, 1ULL << 30, "N",
                   "stack size of each connection thread or coroutine, in kB (256)"),
        OPT_FLAG_E("own-stacks", 0, &cfg->own_stacks,
                   "a stack of --stack-kb per coroutine instead of one shared,\n"
                   "its waiting frames copied aside (see servers/core/coro.h)"),
        OPT_STRING_E("tenants", 0, &cfg->tenants, NULL, "DIR", "tenant programs, DIR/<name>.lua"),
        OPT_SIZE_E("tenant-mem-kb", 0, &cfg->tenant_mem_kb, 1024, 64 << 10, 1ULL << 30, "N",
                   "memory limit per request, in kB (4096)"),
        OPT_INT_E("tenant-ms", 0, &cfg->tenant_ms, 1, 600000, "N", "time limit per request (100)"),
        OPT_STRINGS_E("upstream", 0, cfg->upstreams, &cfg->n_upstreams, SERVER_MAX_UPSTREAMS,
                      check_upstream, "HOST:PORT",
                      "a server to pass requests to (repeatable: round robin)"),
        OPT_INT_E("upstream-keepalive", 0, &cfg->upstream_keepalive, 0, 100000, "N",
                  "idle upstream connections kept per loop and upstream,\n"
                  "0 = a new connection per request (64)"),
        OPT_INT_E("upstream-idle-ms", 0, &cfg->upstream_idle_ms, 1, 86400000, "N",
                  "close a pooled upstream connection idle for N ms (60000)"),
        OPT_INT_E("upstream-timeout-ms", 0, &cfg->upstream_timeout_ms, 1, 86400000, "N",
                  "connect, and the answer's first byte, within N ms,\n"
                  "or 502/504 (30000)"),
        OPT_FLAG_E("splice", 0, &cfg->splice,
                   "splice(2) long answer bodies from an upstream of large\n"
                   "segments instead of copying them: less CPU for the proxy,\n"
                   "more for its peers on the same machine (lab)"),
        OPT_FLAG_E("no-splice", 0, &no_splice, "copy long answer bodies (the default)"),
        OPT_FLAG_E("no-exclusive", 0, &cfg->no_exclusive,
                   "watch the shared listener without EPOLLEXCLUSIVE:\n"
                   "every idle thread wakes for each connection (lab)"),
        OPT_END,
    };
    static const struct {
        const char *name;
        unsigned bit;
    } optional[] = {{"threads", SERVER_OPT_THREADS},
                    {"workers", SERVER_OPT_WORKERS},
                    {"stack-kb", SERVER_OPT_STACK},
                    {"own-stacks", SERVER_OPT_CORO},
                    {"tenants", SERVER_OPT_TENANTS},
                    {"tenant-mem-kb", SERVER_OPT_TENANTS},
                    {"tenant-ms", SERVER_OPT_TENANTS},
                    {"upstream", SERVER_OPT_UPSTREAM},
                    {"upstream-keepalive", SERVER_OPT_UPSTREAM},
                    {"upstream-idle-ms", SERVER_OPT_UPSTREAM},
                    {"upstream-timeout-ms", SERVER_OPT_UPSTREAM},
                    {"splice", SERVER_OPT_UPSTREAM},
                    {"no-splice", SERVER_OPT_UPSTREAM},
                    {"no-exclusive", SERVER_OPT_EXCL}};
    for (opt_t *o = table; o->kind >= 0; o++)
        for (size_t i = 0; i < sizeof optional / sizeof *optional; i++)
            if (strcmp(o->name, optional[i].name) == 0)
                o->off = unless(opts, optional[i].bit);
    char prog[64];
    snprintf(prog, sizeof prog, "server-%s", design);
    opt_spec_t spec = {.prog = prog, .opts = table};
    opt_parse_or_exit(&spec, argc, argv, NULL, 0);
    if (no_splice)
        cfg->splice = 0;

    server_process_init();
}

void server_process_init(void)
{
    /* c10k needs more descriptors than the usual soft limit of 1024. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        /* On failure the soft limit stays, and the cap below follows it. */
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Without --max-conns, connections are capped just below the
     * descriptor limit, so that the last ones are refused with a 503
     * instead of failing in accept, and the memory they may hold is
     * bounded (see the README). */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        default_max_conns = rl.rlim_cur > SERVER_FD_RESERVE + 16 ? rl.rlim_cur - SERVER_FD_RESERVE
                                                                 : rl.rlim_cur / 2;
    stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* On the thread's alternate stack when it has one: a sandbox runner's
     * thread may be at the very end of the sandbox's stack (sandbox_limit.c),
     * with no room for a signal frame. */
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_ONSTACK};
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a blocked accept/poll returns EINTR and sees the flag. */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int server_listen(const server_cfg_t *cfg, int flags)
{
    char err[256];
    int fd = net_listen(cfg->host, cfg->port, 4096, flags, err, sizeof err);
    if (fd < 0)
        fprintf(stderr, "server-%s: %s\n", cfg->design, err);
    return fd;
}

void server_announce(const server_cfg_t *cfg, int lfd)
{
    fprintf(stderr, "listening on %s:%d\n", cfg->host, net_local_port(lfd));
    fflush(stderr);
}

void server_refuse(int fd, const char *why)
{
    char msg[256];
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                     strlen(why) + 1, why);
    /* Best effort: the socket buffer of a new connection has room for this. */
    if (send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    }
    close(fd);
    metrics_error(ME_REFUSED);
}

/* A descriptor kept in reserve for running out of them (server_accept);
 * opened before the first accept, or with the first connection accepted
 * elsewhere (server_admit), so that it exists when it is needed. */
static void spare_open(void)
{
    if (spare_fd < 0)
        spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

int server_accept(int lfd, const server_cfg_t *cfg)
{
    spare_open();
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if ((e == EMFILE || e == ENFILE) && spare_fd >= 0) {
            /* Out of descriptors: a pending connection would keep the
             * listener readable forever. Accept it on the spare one and
             * refuse it. accept4 fails with EMFILE even when nothing is
             * pending, so an empty backlog ends the accepting (-EAGAIN). */
            metrics_error(ME_ACCEPT);
            close(spare_fd);
            fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                server_refuse(fd, "out of descriptors");
            spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            return fd >= 0 ? -ECONNREFUSED : -EAGAIN;
        }
        /* Out of descriptors with no spare: stop accepting for this wake-up. */
        return e == EWOULDBLOCK ? -EAGAIN : -e;
    }
    return server_admit(fd, cfg);
}

int server_admit(int fd, const server_cfg_t *cfg)
{
    spare_open();
    uint64_t max = cfg->max_conns ? (uint64_t)cfg->max_conns : default_max_conns;
    if ((cfg->max_fd && fd >= cfg->max_fd) || metrics_conn_admit(max) < 0) {
        server_refuse(fd, "too many connections");
        return -ECONNREFUSED;
    }
    /* Best effort, both: Nagle only adds latency, and a kernel without
     * TCP_NOTSENT_LOWAT only lets the client pay for the sending (net.c). */
    (void)net_set_nodelay(fd);
    (void)net_set_notsent(fd);
    return fd;
}

int server_accept_blocking(int lfd, const server_cfg_t *cfg)
{
    while (!server_stopping) {
        struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            return -errno;
        if (p[0].revents & POLLIN) {
            int fd = server_accept(lfd, cfg);
            if (fd >= 0)
                return fd; /* refusals and passing errors: wait for the next one */
        }
    }
    return -ECANCELED;
}

session_t *server_session_at(const server_loop_t *L, int fd)
{
    return fd >= 0 && fd < L->end ? L->table[fd] : NULL;
}

session_t *server_accept_session(server_loop_t *L, const server_cfg_t *cfg)
{
    for (;;) {
        int fd = server_accept(L->lfd, cfg);
        if (fd == -ECONNREFUSED || fd == -EINTR || fd == -ECONNABORTED)
            continue;
        if (fd < 0)
            return NULL; /* -EAGAIN, or out of descriptors: try on the next wake-up */
        session_t *s = server_session_new(L, cfg, fd);
        if (s)
            return s;
    }
}

session_t *server_session_new(server_loop_t *L, const server_cfg_t *cfg, int fd)
{
    if (fd >= L->cap) {
        int cap = L->cap ? L->cap : 1024;
        while (cap <= fd)
            cap *= 2;
        session_t **t = realloc(L->table, (size_t)cap * sizeof *t);
        if (!t)
            goto err;
        memset(t + L->cap, 0, (size_t)(cap - L->cap) * sizeof *t);
        L->table = t;
        L->cap = cap;
    }
    /* A place in the heap for its deadline now, so that filing one
     * later cannot fail (a WAIT must not lose its deadline). */
    if (timers_reserve(&L->timers, (size_t)L->count + 1) < 0)
        goto err;
    session_t *s = malloc(sizeof *s);
    if (!s)
        goto err;
    session_init(s, fd, &cfg->session);
    L->table[fd] = s;
    L->count++;
    if (fd >= L->end)
        L->end = fd + 1;
    return s;
err:
    close(fd);
    metrics_conn(0);
    metrics_error(ME_ACCEPT);
    return NULL;
}

/* Freed memory, given back. glibc keeps what is freed in its heaps (one per
 * loop thread) and returns only a free top: the buffers of a burst (answers
 * piled up behind a slow reader, a pipelined batch) leave free pages in the
 * middle that stay resident for the life of the process, and a long-running
 * server's RSS creeps up with its worst moments (the soak saw +9% in ten
 * minutes with the heap in use flat). malloc_trim(0) releases every free
 * page of every heap. The loops call it at most every TRIM_MS, whichever
 * loop comes first, while they are active, and once after sessions were
 * freed (trim_due), so an idle server gives back its last burst too. */
static int64_t trim_at; /* ms of the last trim, shared by the loops */
static int trim_due;    /* sessions were freed since */

static void trim_maybe(int64_t now)
{
    int64_t at = __atomic_load_n(&trim_at, __ATOMIC_RELAXED);
    if (now - at < TRIM_MS ||
        !__atomic_compare_exchange_n(&trim_at, &at, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return; /* not yet, or another loop does it */
    __atomic_store_n(&trim_due, 0, __ATOMIC_RELAXED);
    (void)malloc_trim(0); /* whether it released anything: either is fine */
}

void server_session_free(server_loop_t *L, session_t *s)
{
    /* Off the heap first: a session freed with a deadline filed would leave
     * a dangling node in it. Cancelling cannot fail (timers_set). */
    (void)timers_set(&L->timers, &s->timer, 0);
    if (s->fd >= 0 && s->fd < L->end && L->table[s->fd] == s) {
        L->table[s->fd] = NULL;
        L->count--;
        while (L->end > 0 && !L->table[L->end - 1])
            L->end--;
    }
    session_close(s);
    free(s);
    if (!__atomic_load_n(&trim_due, __ATOMIC_RELAXED))
        __atomic_store_n(&trim_due, 1, __ATOMIC_RELAXED);
}

int server_loop_running(const server_loop_t *L)
{
    return L->lfd >= 0 || (L->count > 0 && time_now_ms() < L->drain_until);
}

int server_loop_timeout(const server_loop_t *L)
{
    int64_t now = time_now_ms();
    int timeout = timers_timeout(&L->timers, now);
    if (L->lfd < 0 && (timeout < 0 || timeout > 100))
        timeout = 100; /* draining: look at the clock now and then */
    if (__atomic_load_n(&trim_due, __ATOMIC_RELAXED)) {
        /* Wake up for the trim (see trim_maybe). */
        int64_t left = __atomic_load_n(&trim_at, __ATOMIC_RELAXED) + TRIM_MS - now;
        int t = left < 0 ? 0 : left > TRIM_MS ? TRIM_MS : (int)left;
        if (timeout < 0 || timeout > t)
            timeout = t;
    }
    return timeout;
}

void server_loop_timers(server_loop_t *L, server_apply_fn apply)
{
    timer_node_t *n;
    trim_maybe(time_now_ms());
    while ((n = timers_expired(&L->timers, time_now_ms())) != NULL) {
        session_t *s = (session_t *)((char *)n - offsetof(session_t, timer));
        apply(L, s, session_on_timer(s));
    }
}

void server_loop_stop(server_loop_t *L, server_apply_fn apply)
{
    if (!server_stopping || L->lfd < 0)
        return;
    close(L->lfd);
    L->lfd = -1;
    L->drain_until = time_now_ms() + SERVER_DRAIN_MS;
    for (int fd = 0; fd < L->end; fd++)
        if (L->table[fd])
            apply(L, L->table[fd], session_shutdown(L->table[fd]));
}

int server_loop_end(server_loop_t *L)
{
    int left = 0;
    for (int fd = 0; fd < L->end; fd++) {
        session_t *s = L->table[fd];
        if (s && session_held(s))
            left++;
        else if (s)
            server_session_free(L, s);
    }
    free(L->table);
    L->table = NULL;
    L->cap = L->end = L->count = 0;
    if (!left)
        timers_free(&L->timers); /* a held session's node is still in it */
    return left;
}

int server_wait_one(session_t *s, int wants, int64_t drain_end)
{
    int64_t now = time_update();
    if (drain_end && now >= drain_end)
        return SERVER_EV_DRAINED; /* what was in flight had its SERVER_DRAIN_MS */
    /* Deadlines first: a socket that is always ready must not hide them. */
    int64_t deadline = session_deadline(s);
    if (deadline && now >= deadline)
        return SERVER_EV_TIMER;
    /* The socket, the stop descriptor until the stop, and the chat's
     * eventfd while in a room (core/chat.h, CHAT_THREADS). */
    struct pollfd p[3] = {
        {.fd = s->fd,
         .events =
             (short)(((wants & SESS_READ) ? POLLIN : 0) | ((wants & SESS_WRITE) ? POLLOUT : 0))},
        {.fd = drain_end ? -1 : stop_fd, .events = POLLIN},
        {.fd = chat_wake_fd(s), .events = POLLIN},
    };
    int64_t until = deadline;
    if (drain_end && (!until || drain_end < until))
        until = drain_end;
    int timeout = until ? (until > now ? (int)(until - now) : 0) : -1;
    /* Once stopping, the stop descriptor stays readable: no longer watched
     * (fd -1 is skipped). Without a room, the chat's slot is not passed. */
    int r = poll(p, p[2].fd >= 0 ? 3 : 2, timeout);
    time_update();
    if (r < 0)
        return errno == EINTR ? SERVER_EV_NONE : -errno;
    if (p[2].revents & POLLIN)
        return SERVER_EV_CHAT;
    short ev = p[0].revents;
    if (ev & POLLOUT)
        return SERVER_EV_WRITABLE;
    if (ev & POLLIN)
        return SERVER_EV_READABLE;
    if (ev & (POLLERR | POLLHUP | POLLNVAL))
        return SERVER_EV_ERROR;
    return SERVER_EV_NONE;
}

/* What server_wait_coro decides before it waits. 16 bytes of integers: on
 * x86-64 and aarch64 it comes back in two registers. */
typedef struct wait_plan {
    int64_t until;  /* the wait's deadline (0: none) */
    int32_t ev;     /* a SERVER_EV_* to return at once, or -1: wait */
    int32_t events; /* the CORO_* events to wait for */
} wait_plan_t;

/* server_wait_coro's checks, out of line: while the coroutine waits, its
 * frames below the session are kept and, on the shared stack, copied at every
 * switch, so server_wait_coro's frame must hold nothing but s. */
static __attribute__((noinline)) wait_plan_t plan_wait(session_t *s, int wants, int64_t drain_end)
{
    wait_plan_t p = {.ev = -1};
    int64_t now = time_now_ms(); /* the scheduler's wake-up brought it up to date */
    if (drain_end && now >= drain_end) {
        p.ev = SERVER_EV_DRAINED;
        return p;
    }
    int64_t deadline = session_deadline(s);
    if (deadline && now >= deadline) {
        p.ev = SERVER_EV_TIMER;
        return p;
    }
    /* Lines another coroutine's SAY left (core/chat.h, CHAT_TASKS): its
     * wake-up may have come while this one was not waiting. */
    if (chat_pending(s)) {
        p.ev = SERVER_EV_CHAT;
        return p;
    }
    p.until = deadline;
    if (drain_end && (!p.until || drain_end < p.until))
        p.until = drain_end;
    p.events = ((wants & SESS_READ) ? CORO_READ : 0) | ((wants & SESS_WRITE) ? CORO_WRITE : 0);
    return p;
}

int server_wait_coro(session_t *s, int wants, int64_t drain_end)
{
    wait_plan_t p = plan_wait(s, wants, drain_end);
    if (p.ev >= 0)
        return p.ev;
    int r = coro_wait(s->fd, p.events, p.until);
    if (r < 0)
        return r == -EINTR ? SERVER_EV_NONE : r;
    if (r & CORO_WAKE)
        return SERVER_EV_CHAT;
    if (r & CORO_WRITE)
        return SERVER_EV_WRITABLE;
    if (r & CORO_READ)
        return SERVER_EV_READABLE;
    if (r & CORO_ERROR)
        return SERVER_EV_ERROR;
    return SERVER_EV_NONE; /* the deadline: the next call tells which */
}

int server_accept_coro(int lfd, const server_cfg_t *cfg)
{
    while (!server_stopping) {
        int fd = server_accept(lfd, cfg);
        if (fd >= 0)
            return fd;
        if (fd == -ECONNREFUSED || fd == -EINTR || fd == -ECONNABORTED)
            continue;
        /* None pending: wait for one. Out of descriptors or memory: the
         * listener stays readable, so wait a little for others to close. */
        int r =
            fd == -EAGAIN ? coro_wait(lfd, CORO_READ, 0) : coro_wait(lfd, 0, time_now_ms() + 10);
        if (r < 0 && r != -EINTR)
            return r;
    }
    return -ECANCELED;
}
