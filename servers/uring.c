/* io_uring server - one thread and one io_uring: the kernel waits for the
 * sockets and moves the bytes, and the loop only answers.
 *
 *   1. One multishot accept on the listening socket, armed once, posts a
 *      completion for every new connection.
 *   2. Each connection has one multishot receive, armed once too. When
 *      bytes arrive, the kernel copies them into a buffer it takes from a
 *      ring of provided buffers (one pool for every connection: no buffer
 *      waits on an idle one) and names it in the completion. The loop feeds
 *      the bytes to the session (session_on_input: the core's external I/O)
 *      and gives the buffer back at once.
 *   3. What a session answered during the turn is taken whole
 *      (session_take_output) and sent, one send per connection per turn;
 *      its completion tells the session how much went (session_sent).
 *   4. The turn ends in one io_uring_enter: it submits every request the
 *      turn queued (sends, receives armed again, cancels) and waits for the
 *      next completions, at most until the earliest deadline of the core's
 *      timer heap (WAITs, header and idle timeouts). No timeout request, no
 *      epoll_ctl, no read or send call.
 *   5. A session that stops reading (a WAIT, a STREAM, answers piling up
 *      unread) has its receive cancelled, so the client's bytes wait in the
 *      kernel as they do unread under epoll; it is armed again when the
 *      session wants to read.
 *   6. A closed session's descriptor is closed once its requests have
 *      completed: the kernel may still be sending from its buffer.
 *   7. The chat's broadcast is epoll's (core/chat.h, CHAT_ONE_LOOP): a SAY
 *      appends the MSG to each member's output and queues the member, whose
 *      send goes in the same io_uring_enter as the rest of the turn's.
 *
 * Where epoll makes two system calls per request and a third per wake-up
 * (read, send, epoll_wait), an io_uring_enter here serves every connection
 * busy in the turn: on loopback at 64 connections, 0.04 system calls per
 * request against 2.0 (strace -c). Yet the CPU per request is at most about
 * 7% lower: a system call costs 0.14 us here, so epoll's, with their
 * descriptor lookups and epoll's ready list, come to about 0.5 us of its
 * 7; the rest is the TCP stack, the same for both (the send, which on
 * loopback also runs the client's receive), and io_uring's own work
 * (submissions, poll wake-ups, completions) is not free either.
 * Weakness: one core, and a long BURN stalls every client, as with epoll;
 * the bytes received are copied twice (into a provided buffer, then into
 * the session); it needs Linux 6.0 (multishot receive), and io_uring is
 * often disabled (container seccomp profiles, kernel.io_uring_disabled):
 * then the server exits 2 with one line saying what is missing. */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/chat.h"
#include "core/metrics.h"
#include "core/net.h"
#include "core/server.h"
#include "core/uring.h"

#define SQ_ENTRIES 1024 /* submissions per io_uring_enter (more: an extra enter) */
#define CQ_ENTRIES 8192
/* Provided receive buffers, shared by every connection: enough for every
 * connection of a busy turn to have one (they go back at the end of the
 * turn), resident from the start (2 MiB). */
#define NBUFS      512
#define BUF_SIZE   4096

/* What a completion is about: the low bits of its user_data; the rest is
 * the conn_t for a receive or a send (malloc aligns it to 16). Cancels
 * carry 0 and post nothing unless they fail (IOSQE_CQE_SKIP_SUCCESS). */
enum { UD_RECV = 1, UD_SEND, UD_ACCEPT, UD_LISTEN_POLL, UD_STOP, UD_MASK = 15 };

enum { R_OFF, R_ON, R_STOPPING }; /* a connection's multishot receive */

typedef struct conn {
    session_t *s;
    buf_t tx;          /* the output being sent (session_take_output) */
    int wants;         /* the session's last SESS_* bits */
    uint8_t recv;      /* R_*: the multishot receive */
    uint8_t sending;   /* 1: a send is in flight, 2: and its cancel too */
    uint8_t closed;    /* the session said SESS_CLOSE: waiting for its requests */
    uint8_t queued;    /* on the list looked at before the turn ends */
    struct conn *next; /* that list */
} conn_t;

static uring_t U;             /* the ring and its provided buffers (core/uring.c) */
static conn_t *queued;        /* connections whose requests change this turn */
static int accepting;         /* UD_ACCEPT or UD_LISTEN_POLL while armed, else 0 */
static int accept_full;       /* out of descriptors: wait for the listener with a poll */
static const server_cfg_t *C; /* the configuration */

/* A submission entry. flush() leaves room for the few queued elsewhere;
 * a full queue would be submitted first (an extra enter). */
static struct io_uring_sqe *sqe(uint64_t ud)
{
    struct io_uring_sqe *e;
    while ((e = io_uring_get_sqe(&U.ring)) == NULL)
        (void)io_uring_submit(&U.ring); /* the kernel takes them all, or says so in completions */
    io_uring_sqe_set_data64(e, ud);
    return e;
}

static void cancel(uint64_t ud)
{
    struct io_uring_sqe *e = sqe(0);
    io_uring_prep_cancel64(e, ud, 0);
    e->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

static void arm_recv(int fd, uint64_t ud)
{
    struct io_uring_sqe *e = sqe(ud);
    io_uring_prep_recv_multishot(e, fd, NULL, 0, 0);
    e->flags |= IOSQE_BUFFER_SELECT;
    e->buf_group = 0;
}

/* Note what the session wants; its requests are queued before the turn ends. */
static void apply(server_loop_t *L, session_t *s, int wants)
{
    conn_t *c = s->owner;
    if (!c->closed)
        c->wants = wants;
    if (!c->queued) {
        c->queued = 1;
        c->next = queued;
        queued = c;
    }
    /* Cannot fail: server_session_new reserved the session's place. */
    (void)timers_set(&L->timers, &s->timer, (c->wants & SESS_CLOSE) ? 0 : session_deadline(s));
}

/* Queue what each connection looked at this turn needs: its output sent,
 * its receive armed or stopped, or, once closed, its requests cancelled
 * and then its session freed. As many as the submission queue holds (two
 * entries each at most, and room left for the accept and the stop): the
 * rest wait for the next turn, which then does not sleep. */
static void flush(server_loop_t *L)
{
    while (queued && io_uring_sq_space_left(&U.ring) >= 4) {
        conn_t *c = queued;
        queued = c->next;
        c->queued = 0;
        uint64_t ud = (uintptr_t)c;
        if (c->wants & SESS_CLOSE) /* (no worker or extension holds one: never SESS_GONE) */
            c->closed = 1;
        if (c->closed) {
            if (c->recv == R_ON) {
                cancel(ud | UD_RECV);
                c->recv = R_STOPPING;
            }
            if (c->sending == 1) { /* a peer that reads no more: it would never end */
                cancel(ud | UD_SEND);
                c->sending = 2;
            }
            if (c->recv == R_OFF && !c->sending) {
                server_session_free(L, c->s);
                buf_free(&c->tx);
                free(c);
            }
            continue;
        }
        if (!c->sending && (buf_used(&c->tx) || session_take_output(c->s, &c->tx))) {
            io_uring_prep_send(sqe(ud | UD_SEND), c->s->fd, buf_head(&c->tx), buf_used(&c->tx),
                               MSG_NOSIGNAL);
            c->sending = 1;
        }
        if ((c->wants & SESS_READ) && c->recv == R_OFF) {
            arm_recv(c->s->fd, ud | UD_RECV);
            c->recv = R_ON;
        } else if (!(c->wants & SESS_READ) && c->recv == R_ON) {
            cancel(ud | UD_RECV);
            c->recv = R_STOPPING;
        }
    }
}

/* The chat's delivery (CHAT_ONE_LOOP): SAY put a line in member s's
 * output: queue it, so that the turn sends it. */
static void chat_wake(session_t *s, void *ctx)
{
    apply(ctx, s, session_wants(s));
}

static void start(server_loop_t *L, session_t *s)
{
    conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        metrics_error(ME_ACCEPT);
        server_session_free(L, s);
        return;
    }
    c->s = s;
    s->owner = c;
    apply(L, s, SESS_READ);
}

static void on_recv(server_loop_t *L, conn_t *c, const struct io_uring_cqe *cqe)
{
    int w = -1;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->recv = R_OFF; /* ended: the peer's end, an error, our cancel, or no buffer left */
    char *p = uring_buf(&U, cqe);
    if (p) {
        if (!c->closed)
            w = session_on_input(c->s, p, cqe->res);
        uring_buf_return(&U, cqe);
    } else if (!c->closed && cqe->res != -ENOBUFS && cqe->res != -ECANCELED) {
        w = session_on_input(c->s, NULL, cqe->res); /* 0: the peer's end; < 0: an error */
    }
    /* Queued either way: armed again if it ended, or freed once closed. */
    apply(L, c->s, w >= 0 ? w : c->closed ? 0 : session_wants(c->s));
}

static void on_send(server_loop_t *L, conn_t *c, const struct io_uring_cqe *cqe)
{
    c->sending = 0;
    apply(L, c->s, c->closed ? 0 : session_sent(c->s, &c->tx, cqe->res));
}

/* A completion of the multishot accept, or of the poll that waits for the
 * listener while out of descriptors (multishot == 0). */
static void on_accept(server_loop_t *L, const struct io_uring_cqe *cqe, int multishot)
{
    session_t *s;
    if (!multishot || !(cqe->flags & IORING_CQE_F_MORE))
        accepting = 0; /* armed again before the turn ends, unless stopping */
    if (!multishot) {
        /* A connection waits: the core's accept takes it, or refuses it
         * on its spare descriptor while we are still out of them. */
        accept_full = 0;
        while (L->lfd >= 0 && (s = server_accept_session(L, C)) != NULL)
            start(L, s);
        return;
    }
    int fd = cqe->res;
    if (fd == -EMFILE || fd == -ENFILE) {
        /* The kernel fails an accept for want of a descriptor before it
         * looks for a connection: armed again, it would fail at once, and
         * spin. A poll on the listener waits for a connection instead. */
        accept_full = 1;
        return;
    }
    if (fd < 0)
        return; /* a connection reset before it was accepted */
    if (L->lfd < 0)
        close(fd); /* accepted while stopping */
    else if (server_admit(fd, C) >= 0 && (s = server_session_new(L, C, fd)) != NULL)
        start(L, s);
}

static void arm_accept(server_loop_t *L)
{
    if (accepting || L->lfd < 0)
        return;
    accepting = accept_full ? UD_LISTEN_POLL : UD_ACCEPT;
    struct io_uring_sqe *e = sqe((uint64_t)accepting);
    if (accept_full)
        io_uring_prep_poll_add(e, L->lfd, POLLIN);
    else
        io_uring_prep_multishot_accept(e, L->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "uring", 0, &cfg);
    cfg.session.external_io = 1; /* the ring moves the bytes */
    C = &cfg;
    char why[256];
    if (uring_open(&U, SQ_ENTRIES, CQ_ENTRIES, NBUFS, BUF_SIZE, why, sizeof why) < 0) {
        fprintf(stderr, "server-uring: %s\n", why);
        return 2;
    }
    server_loop_t loop = {.lfd = server_listen(&cfg, NET_NONBLOCK)};
    if (loop.lfd < 0)
        return 1;
    if (!(cfg.session.chat = chat_new(CHAT_ONE_LOOP, chat_wake, &loop))) {
        fprintf(stderr, "server-uring: out of memory\n");
        return 1;
    }
    io_uring_prep_poll_add(sqe(UD_STOP), server_stop_fd(), POLLIN);
    server_announce(&cfg, loop.lfd);

    while (server_loop_running(&loop)) {
        arm_accept(&loop);
        flush(&loop);
        int ms = queued ? 0 : server_loop_timeout(&loop);
        struct __kernel_timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000LL};
        struct io_uring_cqe *cqe;
        /* Submit and wait in one enter. -ETIME (a deadline) and -EINTR (a
         * signal) end the wait; -EBUSY: completions held back for want of
         * room must be reaped before more is submitted. */
        int rc = io_uring_submit_and_wait_timeout(&U.ring, &cqe, 1, ms >= 0 ? &ts : NULL, NULL);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
            fprintf(stderr, "server-uring: io_uring_enter: %s\n", strerror(-rc));
            return 1;
        }
        time_update();
        unsigned head, n = 0;
        io_uring_for_each_cqe(&U.ring, head, cqe)
        {
            uint64_t ud = cqe->user_data;
            conn_t *c = (conn_t *)(uintptr_t)(ud & ~(uint64_t)UD_MASK);
            switch (ud & UD_MASK) {
            case UD_RECV:
                on_recv(&loop, c, cqe);
                break;
            case UD_SEND:
                on_send(&loop, c, cqe);
                break;
            case UD_ACCEPT:
            case UD_LISTEN_POLL:
                on_accept(&loop, cqe, ud == UD_ACCEPT);
                break;
            default: /* the stop (seen below), a cancel that found nothing */
                break;
            }
            n++;
        }
        uring_bufs_advance(&U);
        io_uring_cq_advance(&U.ring, n);
        server_loop_timers(&loop, apply);
        if (server_stopping && loop.lfd >= 0 && accepting)
            cancel((uint64_t)accepting); /* it holds the listener open */
        server_loop_stop(&loop, apply);
    }
    /* The ring's requests end with it; then nothing refers to the buffers. */
    uring_close(&U);
    for (int fd = 0; fd < loop.end; fd++)
        if (loop.table[fd]) {
            conn_t *c = loop.table[fd]->owner;
            buf_free(&c->tx);
            free(c);
        }
    server_loop_end(&loop);
    chat_free(cfg.session.chat);
    return 0;
}
