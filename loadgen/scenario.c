#include "scenario.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/net.h"
#include "core/timer.h"

const char *const scenario_names[SCEN_N] = {"idle", "slowloris", "slow_readers"};

#define TICK_MS     100
#define MAX_PENDING 512 /* connects in progress at once: stay under the listen backlog */

enum { S_WAIT, S_CONNECTING, S_OPEN, S_FAILED };

typedef struct sconn {
    int fd;
    unsigned char kind, state;
    uint32_t src; /* source address index (0: the default) */
    size_t pos;   /* slowloris: next byte of the request to send */
} sconn_t;

typedef struct sloop {
    scenario_t *s;
    int ep;
    sconn_t *c;
    size_t n, next_start, pending, attempted;
    char req[SCEN_N][4096]; /* the request each kind sends */
    size_t req_len[SCEN_N];
    int spread; /* use 127.0.0.x source addresses */
    size_t per_src;
} sloop_t;

static void note_error(scenario_t *s, const char *what, int err)
{
    if (!s->first_error[0])
        snprintf(s->first_error, sizeof s->first_error, "%s: %s", what, strerror(err));
}

static void sc_close(sloop_t *l, sconn_t *c, int by_server)
{
    scen_stats_t *st = &l->s->st[c->kind];
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->state == S_OPEN)
        st->open--;
    if (c->state == S_CONNECTING)
        l->pending--;
    if (by_server)
        st->closed++;
    c->state = S_WAIT;
    c->pos = 0;
}

static void sc_connect(sloop_t *l, sconn_t *c)
{
    struct sockaddr_in from;
    const struct sockaddr *fp = NULL;
    if (l->spread && c->src > 0) {
        memset(&from, 0, sizeof from);
        from.sin_family = AF_INET;
        from.sin_addr.s_addr = htonl(0x7f000001u + c->src); /* 127.0.0.2 onwards */
        fp = (const struct sockaddr *)&from;
    }
    int fd = net_connect((const struct sockaddr *)&l->s->addr, l->s->addrlen, fp,
                         fp ? sizeof from : 0, NET_NONBLOCK);
    l->attempted++;
    if (fd < 0) {
        note_error(l->s, "connect", -fd);
        l->s->st[c->kind].failed++;
        c->state = S_FAILED;
        return;
    }
    if (c->kind == SCEN_SLOW_READERS) {
        /* A small receive buffer makes the server's writes block early. */
        int small = 4096;
        /* Best effort: with the default buffer they are merely slower to
         * block the server; a valid option and size cannot fail anyway. */
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    c->fd = fd;
    c->state = S_CONNECTING;
    l->pending++;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        note_error(l->s, "epoll", errno);
        l->s->st[c->kind].failed++;
        l->pending--;
        close(fd);
        c->fd = -1;
        c->state = S_FAILED;
    }
}

static void sc_event(sloop_t *l, sconn_t *c, unsigned ev)
{
    scen_stats_t *st = &l->s->st[c->kind];
    char scratch[4096];
    if (c->state == S_CONNECTING) {
        int rc = net_connect_result(c->fd);
        l->pending--;
        if (rc < 0) {
            note_error(l->s, "connect", -rc);
            st->failed++;
            close(c->fd);
            c->fd = -1;
            c->state = S_FAILED;
            return;
        }
        c->state = S_OPEN;
        st->opened++;
        st->open++;
        /* Slow readers are read on the tick only: no EPOLLIN, or a level-
         * triggered loop would spin on their unread bytes. */
        struct epoll_event e = {.events = c->kind == SCEN_SLOW_READERS ? 0 : EPOLLIN,
                                .data.ptr = c};
        (void)epoll_ctl(l->ep, EPOLL_CTL_MOD, c->fd, &e); /* registered: cannot fail */
        if (c->kind == SCEN_SLOW_READERS && write(c->fd, l->req[c->kind], l->req_len[c->kind]) < 0)
            sc_close(l, c, 1);
        return;
    }
    if (c->state != S_OPEN)
        return;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = c->kind == SCEN_SLOW_READERS ? 0 : read(c->fd, scratch, sizeof scratch);
        if (n > 0 || (n < 0 && errno == EAGAIN))
            return; /* answers to a slowloris request are dropped */
        sc_close(l, c, 1);
    }
}

static void sc_tick(sloop_t *l, uint64_t tick)
{
    char scratch[65536];
    size_t budget = l->s->o->slow_read_bps / (1000 / TICK_MS);
    if (budget == 0)
        budget = 1;
    if (budget > sizeof scratch)
        budget = sizeof scratch;
    for (size_t i = 0; i < l->n; i++) {
        sconn_t *c = &l->c[i];
        if (c->state == S_WAIT && l->pending < MAX_PENDING) {
            sc_connect(l, c);
            continue;
        }
        if (c->state != S_OPEN)
            continue;
        if (c->kind == SCEN_SLOWLORIS && (tick + i) % (1000 / TICK_MS) == 0) {
            /* One byte a second; the connections are spread over the ticks. */
            ssize_t n = write(c->fd, l->req[c->kind] + c->pos, 1);
            if (n < 0 && errno != EAGAIN) {
                sc_close(l, c, 1);
                continue;
            }
            if (n == 1) {
                l->s->st[c->kind].bytes++;
                if (++c->pos == l->req_len[c->kind])
                    c->pos = 0;
            }
        } else if (c->kind == SCEN_SLOW_READERS) {
            ssize_t n = read(c->fd, scratch, budget);
            if (n > 0)
                l->s->st[c->kind].bytes += (uint64_t)n;
            else if (n == 0 || errno != EAGAIN)
                sc_close(l, c, 1);
        }
    }
}

static void build_requests(sloop_t *l)
{
    const lg_opts_t *o = l->s->o;
    if (o->proto == LG_HTTP) {
        snprintf(l->req[SCEN_SLOWLORIS], sizeof l->req[0],
                 "GET %s HTTP/1.1\r\nHost: %s\r\nX-Slowloris: 1\r\n\r\n", o->paths[0], o->host);
        snprintf(l->req[SCEN_SLOW_READERS], sizeof l->req[0],
                 "GET /stream?n=%llu HTTP/1.1\r\nHost: %s\r\n\r\n",
                 (unsigned long long)o->slow_stream_bytes, o->host);
    } else {
        snprintf(l->req[SCEN_SLOWLORIS], sizeof l->req[0], "PING\n");
        snprintf(l->req[SCEN_SLOW_READERS], sizeof l->req[0], "STREAM %llu\n",
                 (unsigned long long)o->slow_stream_bytes);
    }
    for (int k = 0; k < SCEN_N; k++)
        l->req_len[k] = strlen(l->req[k]);
}

static void *scenario_thread(void *arg)
{
    sloop_t *l = arg;
    struct epoll_event evs[256];
    uint64_t tick = 0;
    int64_t next_tick = time_update();
    while (!atomic_load(&l->s->stop)) {
        int timeout = (int)(next_tick - time_update());
        int n = epoll_wait(l->ep, evs, 256, timeout > 0 ? timeout : 0);
        for (int i = 0; i < n; i++)
            sc_event(l, evs[i].data.ptr, evs[i].events);
        if (time_update() >= next_tick) {
            sc_tick(l, tick++);
            next_tick += TICK_MS;
            if (next_tick < time_now_ms())
                next_tick = time_now_ms() + TICK_MS;
        }
        if (!atomic_load(&l->s->ready) && l->attempted >= l->n && l->pending == 0)
            atomic_store(&l->s->ready, 1);
    }
    for (size_t i = 0; i < l->n; i++)
        if (l->c[i].fd >= 0)
            close(l->c[i].fd);
    close(l->ep);
    free(l->c);
    free(l);
    return NULL;
}

/* How many connections one source address can open to one port: the
 * ephemeral range, less a margin for the measured load's own connections. */
static size_t per_source(void)
{
    long lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &lo, &hi) != 2)
            lo = 32768, hi = 60999;
        fclose(f);
    }
    long n = hi - lo + 1 - 2000;
    return n > 1000 ? (size_t)n : 1000;
}

int scenario_start(scenario_t *s, const lg_opts_t *o, const struct sockaddr_storage *addr,
                   socklen_t addrlen, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->o = o;
    memcpy(&s->addr, addr, addrlen);
    s->addrlen = addrlen;
    s->st[SCEN_IDLE].requested = o->idle;
    s->st[SCEN_SLOWLORIS].requested = o->slowloris;
    s->st[SCEN_SLOW_READERS].requested = o->slow_readers;
    size_t total = (size_t)o->idle + o->slowloris + o->slow_readers;
    if (total == 0) {
        atomic_store(&s->ready, 1);
        return 0;
    }
    sloop_t *l = calloc(1, sizeof *l);
    if (!l || !(l->c = calloc(total, sizeof *l->c)) || (l->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        goto err;
    l->s = s;
    l->n = total;
    l->per_src = per_source();
    const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
    l->spread = addr->ss_family == AF_INET && (ntohl(sin->sin_addr.s_addr) >> 24) == 127 &&
                total > l->per_src;
    build_requests(l);
    for (size_t i = 0; i < total; i++) {
        sconn_t *c = &l->c[i];
        c->fd = -1;
        c->kind = i < o->idle                          ? SCEN_IDLE
                  : i < (size_t)o->idle + o->slowloris ? SCEN_SLOWLORIS
                                                       : SCEN_SLOW_READERS;
        c->src = l->spread ? (uint32_t)(i / l->per_src) : 0;
    }
    if (pthread_create(&s->tid, NULL, scenario_thread, l) != 0)
        goto err;
    s->running = 1;
    return 0;
err:
    snprintf(err, errlen, "cannot start the scenario thread: %s", strerror(errno));
    if (l) {
        free(l->c);
        if (l->ep > 0)
            close(l->ep);
        free(l);
    }
    return -ENOMEM;
}

int scenario_wait_ready(scenario_t *s, int64_t timeout_ms)
{
    int64_t until = time_update() + timeout_ms;
    while (!atomic_load(&s->ready) && time_update() < until)
        usleep(10000);
    return atomic_load(&s->ready);
}

void scenario_stop(scenario_t *s)
{
    if (!s->running)
        return;
    atomic_store(&s->stop, 1);
    pthread_join(s->tid, NULL);
    s->running = 0;
}
