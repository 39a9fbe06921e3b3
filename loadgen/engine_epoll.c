/* engine_epoll: the engine's epoll backend (engine_io.h), the default.
 *
 * Level-triggered readiness: a connecting socket waits for EPOLLOUT; an open
 * one for EPOLLIN, and EPOLLOUT too while a write is partial. Each readable
 * socket gets one read, each refill one write: two system calls per
 * request, and an epoll_pwait2 per wake-up shared by the sockets ready. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "core/net.h"
#include "engine_io.h"

#define MAX_EVENTS 256

typedef struct ep {
    int fd;
    struct epoll_event evs[MAX_EVENTS];
} ep_t;

/* Register c's events. Returns 0 or -errno: only the first registration
 * (ADD: out of memory or of epoll watches) can fail; a MOD of a registered,
 * open descriptor cannot. */
static int arm(lg_loop_t *l, lg_conn_t *c, unsigned ev)
{
    ep_t *ep = l->io;
    if (ev == c->io)
        return 0;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(ep->fd, c->io ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e) < 0)
        return -errno;
    c->io = ev;
    return 0;
}

static int ep_init(lg_loop_t *l)
{
    ep_t *ep = calloc(1, sizeof *ep);
    if (!ep)
        return -ENOMEM;
    l->io = ep;
    ep->fd = epoll_create1(EPOLL_CLOEXEC);
    return ep->fd < 0 ? -errno : 0;
}

static void ep_free(lg_loop_t *l)
{
    ep_t *ep = l->io;
    if (!ep)
        return;
    if (ep->fd >= 0)
        close(ep->fd);
    free(ep);
    l->io = NULL;
}

static int ep_watch(lg_loop_t *l, lg_conn_t *c)
{
    return arm(l, c, EPOLLOUT);
}

static void ep_forget(lg_loop_t *l, lg_conn_t *c)
{
    (void)l;
    c->io = 0; /* closing the descriptor leaves the epoll set */
}

static int ep_flush(lg_loop_t *l, lg_conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            engine_failed(l, c, LG_ERR_WRITE, errno);
            return -1;
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        (void)arm(l, c, EPOLLIN); /* a MOD: cannot fail */
    } else {
        (void)arm(l, c, EPOLLIN | EPOLLOUT); /* a MOD: cannot fail */
    }
    return 0;
}

/* The room of a read after one that filled its room: a long answer
 * streaming in. In the buffer's 16 KiB, a 1 MiB answer took 64 reads and
 * cost loadgen 164-168 us of CPU; in 64 KiB, 130-134 us. And a connection
 * with a small receive window, drained 16 KiB a turn, waited for its window
 * to reopen while others took their turns: 64 connections pipelining
 * 64 KiB answers from server-epoll saw a p99 of 3.5-5.8 times the p50, and
 * 1.7-2.1 times with 64 KiB. Short answers keep the buffer's 16 KiB. */
#define READ_MAX (64 << 10)

/* One read into c->in, and the responses in it to the loop. */
static void ep_read(lg_loop_t *l, lg_conn_t *c)
{
    if (engine_in_room(l, c, c->read_full ? READ_MAX : 4096) < 0)
        return;
    size_t room = buf_room(&c->in);
    ssize_t n = read(c->fd, c->in.data + c->in.len, room);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        engine_eof(l, c, n < 0 ? errno : 0);
        return;
    }
    c->read_full = (size_t)n == room;
    engine_received(l, c, (size_t)n);
}

static void ep_event(lg_loop_t *l, lg_conn_t *c, unsigned ev)
{
    if (c->state == C_CONNECTING) {
        int rc = net_connect_result(c->fd);
        if (rc == 0)
            (void)arm(l, c, EPOLLIN); /* a MOD: cannot fail */
        engine_connected(l, c, rc);
        return;
    }
    if (c->state != C_OPEN)
        return;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ep_read(l, c);
        if (c->state != C_OPEN || c->fd < 0)
            return;
    }
    if ((ev & EPOLLOUT) && c->out_off < c->out_len)
        ep_flush(l, c);
}

static int ep_wait(lg_loop_t *l, int64_t timeout_us)
{
    ep_t *ep = l->io;
    struct timespec ts = {.tv_sec = timeout_us / 1000000, .tv_nsec = (timeout_us % 1000000) * 1000};
    int n = epoll_pwait2(ep->fd, ep->evs, MAX_EVENTS, &ts, NULL);
    if (n < 0 && errno == ENOSYS)
        n = epoll_wait(ep->fd, ep->evs, MAX_EVENTS, (int)((timeout_us + 999) / 1000));
    l->now = time_now_us();
    time_update();
    for (int i = 0; i < n; i++)
        ep_event(l, ep->evs[i].data.ptr, ep->evs[i].events);
    return 0;
}

const lg_backend_t engine_epoll = {
    .name = "epoll",
    .init = ep_init,
    .free = ep_free,
    .watch = ep_watch,
    .flush = ep_flush,
    .forget = ep_forget,
    .wait = ep_wait,
};
