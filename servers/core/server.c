#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stddef.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "metrics.h"
#include "net.h"
#include "proto.h"

#define VERSION "0.1.0"

volatile sig_atomic_t server_stopping;
static int stop_fd = -1;
static __thread int spare_fd = -1;
/* The connection cap when --max-conns is not given (0: none). */
static uint64_t default_max_conns;

static void on_signal(int sig)
{
    (void)sig;
    uint64_t one = 1;
    int saved = errno;
    server_stopping = 1;
    if (stop_fd >= 0 && write(stop_fd, &one, sizeof one) < 0) {
        /* the counter is already non-zero: nothing to do */
    }
    errno = saved;
}

int server_stop_fd(void)
{
    return stop_fd;
}

static void usage(FILE *f, const char *design, unsigned opts)
{
    fprintf(f, "usage: server-%s [options]\n"
               "  --host ADDR             address to listen on (127.0.0.1)\n"
               "  --port N                port, 0 for any free one (8090)\n"
               "  --max-conns N           refuse connections beyond N with 503\n"
               "                          (default: the descriptor limit less 64)\n"
               "  --header-timeout-ms N   close a connection whose request is not complete\n"
               "                          within N ms, 0 = never (10000)\n"
               "  --idle-timeout-ms N     close a connection silent for N ms, 0 = never (60000)\n"
               "  --burn-max N            largest BURN accepted (10000000000)\n"
               "  --write-each            one write per answer instead of one per batch (lab)\n",
            design);
    if (opts & SERVER_OPT_THREADS)
        fprintf(f, "  --threads N             event loops (online CPUs)\n");
    if (opts & SERVER_OPT_WORKERS)
        fprintf(f, "  --workers N             BURN worker threads (online CPUs)\n");
    if (opts & SERVER_OPT_STACK)
        fprintf(f, "  --stack-kb N            stack size of each connection thread (256)\n");
    if (opts & SERVER_OPT_TENANTS)
        fprintf(f, "  --tenants DIR           tenant programs, DIR/<name>.lua\n"
                   "  --tenant-mem-kb N       memory limit per request (4096)\n"
                   "  --tenant-ms N           time limit per request (100)\n");
    fprintf(f, "  --help, --version\n");
}

/* Parse a decimal integer flag value within [lo, hi] or exit 2. */
static long long int_arg(const char *design, const char *flag, const char *v, long long lo,
                         long long hi)
{
    uint64_t x;
    if (proto_parse_u64(v, strlen(v), (uint64_t)hi, &x) < 0 || (long long)x < lo) {
        fprintf(stderr, "server-%s: --%s: expected an integer from %lld to %lld, got '%s'\n",
                design, flag, lo, hi, v);
        exit(2);
    }
    return (long long)x;
}

void server_init(int argc, char **argv, const char *design, unsigned opts, server_cfg_t *cfg)
{
    enum { O_HOST = 256, O_PORT, O_THREADS, O_WORKERS, O_MAXC, O_HTO, O_ITO, O_BURN, O_STACK,
           O_TENANTS, O_TMEM, O_TMS, O_WRITE_EACH, O_HELP, O_VERSION };
    static const struct option all[] = {
        {"host", 1, 0, O_HOST}, {"port", 1, 0, O_PORT}, {"threads", 1, 0, O_THREADS},
        {"workers", 1, 0, O_WORKERS}, {"max-conns", 1, 0, O_MAXC},
        {"header-timeout-ms", 1, 0, O_HTO}, {"idle-timeout-ms", 1, 0, O_ITO},
        {"burn-max", 1, 0, O_BURN}, {"stack-kb", 1, 0, O_STACK}, {"tenants", 1, 0, O_TENANTS},
        {"tenant-mem-kb", 1, 0, O_TMEM}, {"tenant-ms", 1, 0, O_TMS},
        {"write-each", 0, 0, O_WRITE_EACH}, {"help", 0, 0, O_HELP},
        {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    memset(cfg, 0, sizeof *cfg);
    cfg->design = design;
    cfg->host = "127.0.0.1";
    cfg->port = 8090;
    cfg->threads = cfg->workers = ncpu > 0 ? (int)ncpu : 1;
    cfg->stack_kb = 256;
    cfg->tenant_mem_kb = 4096;
    cfg->tenant_ms = 100;
    session_cfg_default(&cfg->session);

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", all, NULL)) != -1) {
        const char *name = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
        switch (c) {
        case O_HOST: cfg->host = optarg; break;
        case O_PORT: cfg->port = (int)int_arg(design, "port", optarg, 0, 65535); break;
        case O_MAXC: cfg->max_conns = (int)int_arg(design, "max-conns", optarg, 0, 10000000); break;
        case O_HTO:
            cfg->session.header_timeout_ms =
                (int)int_arg(design, "header-timeout-ms", optarg, 0, 86400000);
            break;
        case O_ITO:
            cfg->session.idle_timeout_ms =
                (int)int_arg(design, "idle-timeout-ms", optarg, 0, 86400000);
            break;
        case O_BURN:
            cfg->session.burn_max =
                (uint64_t)int_arg(design, "burn-max", optarg, 0, (long long)PROTO_BURN_MAX * 100);
            break;
        case O_THREADS:
        case O_WORKERS:
        case O_STACK:
        case O_TENANTS:
        case O_TMEM:
        case O_TMS: {
            unsigned need = c == O_THREADS ? SERVER_OPT_THREADS
                            : c == O_WORKERS ? SERVER_OPT_WORKERS
                            : c == O_STACK   ? SERVER_OPT_STACK
                                             : SERVER_OPT_TENANTS;
            if (!(opts & need)) {
                fprintf(stderr, "server-%s: %s does not apply to this design\n", design, name);
                exit(2);
            }
            if (c == O_THREADS)
                cfg->threads = (int)int_arg(design, "threads", optarg, 1, 1024);
            else if (c == O_WORKERS)
                cfg->workers = (int)int_arg(design, "workers", optarg, 1, 1024);
            else if (c == O_STACK)
                cfg->stack_kb = (size_t)int_arg(design, "stack-kb", optarg, 16, 1 << 20);
            else if (c == O_TENANTS)
                cfg->tenants = optarg;
            else if (c == O_TMEM)
                cfg->tenant_mem_kb = (int)int_arg(design, "tenant-mem-kb", optarg, 64, 1 << 20);
            else
                cfg->tenant_ms = (int)int_arg(design, "tenant-ms", optarg, 1, 600000);
            break;
        }
        case O_WRITE_EACH:
            cfg->session.write_each = 1;
            break;
        case O_HELP:
            usage(stdout, design, opts);
            exit(0);
        case O_VERSION:
            printf("server-%s %s\n", design, VERSION);
            exit(0);
        case ':':
            fprintf(stderr, "server-%s: %s needs a value\n", design, name);
            exit(2);
        default:
            fprintf(stderr, "server-%s: unknown option '%s' (see --help)\n", design, name);
            exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "server-%s: unexpected argument '%s' (see --help)\n", design, argv[optind]);
        exit(2);
    }

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
    if (fd < 0) {
        fprintf(stderr, "server-%s: %s\n", cfg->design, err);
        exit(1);
    }
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

int server_accept(int lfd, const server_cfg_t *cfg)
{
    /* A descriptor kept in reserve for running out of them (below); opened
     * before the first accept, so it exists when it is needed. */
    if (spare_fd < 0)
        spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
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
    uint64_t max = cfg->max_conns ? (uint64_t)cfg->max_conns : default_max_conns;
    if ((cfg->max_fd && fd >= cfg->max_fd) || metrics_conn_admit(max) < 0) {
        server_refuse(fd, "too many connections");
        return -ECONNREFUSED;
    }
    net_set_nodelay(fd);
    return fd;
}

static session_t **table;
static int table_cap, table_end, table_count;

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

session_t *server_session_at(int fd)
{
    return fd >= 0 && fd < table_end ? table[fd] : NULL;
}

int server_session_end(void)
{
    return table_end;
}

int server_session_count(void)
{
    return table_count;
}

session_t *server_accept_session(int lfd, const server_cfg_t *cfg)
{
    for (;;) {
        int fd = server_accept(lfd, cfg);
        if (fd == -ECONNREFUSED || fd == -EINTR || fd == -ECONNABORTED)
            continue;
        if (fd < 0)
            return NULL; /* -EAGAIN, or out of descriptors: try on the next wake-up */
        if (fd >= table_cap) {
            int cap = table_cap ? table_cap : 1024;
            while (cap <= fd)
                cap *= 2;
            session_t **t = realloc(table, (size_t)cap * sizeof *t);
            if (!t)
                goto err;
            memset(t + table_cap, 0, (size_t)(cap - table_cap) * sizeof *t);
            table = t;
            table_cap = cap;
        }
        session_t *s = malloc(sizeof *s);
        if (!s)
            goto err;
        session_init(s, fd, &cfg->session);
        table[fd] = s;
        table_count++;
        if (fd >= table_end)
            table_end = fd + 1;
        return s;
    err:
        close(fd);
        metrics_conn(0);
        metrics_error(ME_ACCEPT);
    }
}

void server_session_free(session_t *s)
{
    if (s->fd >= 0 && s->fd < table_end && table[s->fd] == s) {
        table[s->fd] = NULL;
        table_count--;
        while (table_end > 0 && !table[table_end - 1])
            table_end--;
    }
    session_close(s);
    free(s);
}

static int64_t drain_until;

int server_loop_running(int lfd)
{
    return lfd >= 0 || (table_count > 0 && time_now_ms() < drain_until);
}

int server_loop_timeout(const timers_t *t, int lfd)
{
    int timeout = timers_timeout(t, time_now_ms());
    if (lfd < 0 && (timeout < 0 || timeout > 100))
        timeout = 100; /* draining: look at the clock now and then */
    return timeout;
}

void server_loop_timers(timers_t *t, server_apply_fn apply)
{
    timer_node_t *n;
    while ((n = timers_expired(t, time_now_ms())) != NULL) {
        session_t *s = (session_t *)((char *)n - offsetof(session_t, timer));
        apply(s, session_on_timer(s));
    }
}

void server_loop_stop(int *lfd, server_apply_fn apply)
{
    if (!server_stopping || *lfd < 0)
        return;
    close(*lfd);
    *lfd = -1;
    drain_until = time_now_ms() + SERVER_DRAIN_MS;
    for (int fd = 0; fd < table_end; fd++)
        if (table[fd])
            apply(table[fd], session_shutdown(table[fd]));
}

void server_loop_end(void)
{
    for (int fd = 0; fd < table_end; fd++)
        if (table[fd])
            server_session_free(table[fd]);
    free(table);
    table = NULL;
    table_cap = table_end = 0;
}

void server_serve_blocking(int fd, const server_cfg_t *cfg)
{
    session_t s;
    int w = SESS_READ, stopping = 0;
    int64_t drain_end = 0;
    session_init(&s, fd, &cfg->session);
    while (!(w & SESS_CLOSE)) {
        if (w & SESS_WORK) {
            session_work_run(&s);
            w = session_on_work_done(&s);
            continue;
        }
        int64_t now = time_update();
        if (server_stopping && !stopping) {
            stopping = 1;
            drain_end = now + SERVER_DRAIN_MS;
            w = session_shutdown(&s);
            continue;
        }
        if (stopping && now >= drain_end)
            break; /* what is in flight had its SERVER_DRAIN_MS */
        /* Deadlines first: a socket that is always ready must not hide them. */
        int64_t deadline = session_deadline(&s);
        if (deadline && now >= deadline) {
            w = session_on_timer(&s);
            continue;
        }
        struct pollfd p[2] = {
            {.fd = fd, .events = (short)(((w & SESS_READ) ? POLLIN : 0) | ((w & SESS_WRITE) ? POLLOUT : 0))},
            {.fd = stop_fd, .events = POLLIN},
        };
        int64_t until = deadline;
        if (stopping && (!until || drain_end < until))
            until = drain_end;
        int timeout = until ? (until > now ? (int)(until - now) : 0) : -1;
        int r = poll(p, stopping ? 1 : 2, timeout);
        time_update();
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        short ev = p[0].revents;
        if (ev & POLLOUT)
            w = session_on_writable(&s);
        else if (ev & POLLIN)
            w = session_on_readable(&s);
        else if (ev & (POLLERR | POLLHUP | POLLNVAL))
            w = session_on_error(&s);
    }
    session_close(&s);
}
