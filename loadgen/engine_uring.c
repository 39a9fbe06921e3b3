/* engine_uring: the engine's io_uring backend (engine_io.h), --engine uring.
 *
 * One ring per thread, and one io_uring_enter per turn of the loop, which
 * submits what the last turn queued and waits for what comes next:
 *  1. A connecting socket gets a POLL_ADD for POLLOUT: its completion is the
 *     end of the connect.
 *  2. An open socket gets one multishot RECV on a provided buffer ring: it
 *     stays armed, and every arrival is a completion naming a buffer the
 *     kernel filled; its bytes go to c->in and the buffer goes back to the
 *     ring at once. (A kernel without multishot receives gets the same RECV,
 *     single shot, armed again after each completion.)
 *  3. Requests the loop queues get a SEND of c->out. While it is in flight it
 *     pins c->out: the loop appends after it and moves nothing; what it did
 *     not send, and what was appended, go in the next SEND, on its completion.
 *  4. The turn's completions are handled in one batch; the SENDs and RECVs
 *     they cause wait in the submission queue for the next turn's enter.
 * So the epoll backend's system calls per request (a read, a write, a share
 * of an epoll_pwait2) become a share of one io_uring_enter: the kernel's TCP
 * work stays, the crossings and the readiness bookkeeping go. The ring is
 * made with IORING_SETUP_DEFER_TASKRUN where the kernel has it: the
 * completions' work then runs inside that io_uring_enter, in this thread,
 * never interrupting the loop.
 *
 * A connection is closed with a shutdown first (what the turn queued goes
 * in before, while the descriptor's number is still this socket's): that
 * ends its RECV, its POLL_ADD and a SEND waiting for room at once, and their
 * completions, tagged with the connection's previous generation, are
 * dropped (their buffers given back). A SEND in flight pins c->out across
 * the close: the next socket's first SEND waits for its completion.
 *
 * The weakness: it saves system calls, not the kernel's TCP work, and on
 * loopback that work is most of the cost. Sending a request (tcp_sendmsg,
 * and the delivery to the server's socket it runs in softirq) takes about
 * 70% of the load generator's CPU per request, receiving the answer about
 * 8%, exactly as sending and receiving take the server's: with five times
 * fewer system calls than the epoll backend, it still costs about what the
 * epoll server costs per request. And every arrival in flight holds a
 * provided buffer: a turn with more arrivals than buffers ends some RECVs
 * with ENOBUFS (armed again, their bytes still in the socket). */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/net.h"
#include "engine_io.h"

#define BGID     0     /* the provided buffers' group */
#define BUF_SIZE 16384 /* bytes per provided buffer: as the epoll backend's reads */
#define BUFS_MIN 64
#define BUFS_MAX 1024 /* per thread: 16 MiB at most */
#define SQ_MAX   4096

enum { OP_CONNECT = 1, OP_RECV, OP_SEND };

#define IO_RECV 1u /* c->io: a RECV is armed on c's socket */
#define IO_SEND 2u /* a SEND is in flight (perhaps for c's previous socket) */

typedef struct ur {
    struct io_uring ring;
    int ring_ok;
    int multishot;
    struct io_uring_buf_ring *br; /* the provided buffers' ring, shared with the kernel */
    size_t br_bytes;
    char *bufs; /* nbufs of BUF_SIZE bytes */
    unsigned nbufs;
} ur_t;

/* ---- the ring ---- */

static unsigned pow2_at_least(size_t n)
{
    unsigned p = 1;
    while (p < n && p < (1u << 30))
        p <<= 1;
    return p;
}

/* A ring of `entries` submissions and 4 times as many completions, with the
 * best task-work mode the kernel has: deferred to io_uring_enter (6.1),
 * cooperative (5.19), or plain. Returns 0 or -errno. */
static int ring_init(struct io_uring *ring, unsigned entries)
{
    static const unsigned modes[] = {
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof modes / sizeof *modes && rc == -EINVAL; i++) {
        struct io_uring_params p = {
            .flags = modes[i] | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP,
            .cq_entries = 4 * entries,
        };
        rc = io_uring_queue_init_params(entries, ring, &p);
    }
    return rc;
}

/* Register n buffers of BUF_SIZE at bufs as group BGID; *br gets the ring
 * (br_bytes long, to munmap). Returns 0 or -errno. */
static int bufs_init(struct io_uring *ring, char *bufs, unsigned n, struct io_uring_buf_ring **br,
                     size_t *br_bytes)
{
    size_t bytes = (size_t)n * sizeof(struct io_uring_buf);
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)m, .ring_entries = n, .bgid = BGID};
    int rc = io_uring_register_buf_ring(ring, &reg, 0);
    if (rc < 0) {
        munmap(m, bytes);
        return rc;
    }
    *br = m;
    *br_bytes = bytes;
    io_uring_buf_ring_init(*br);
    for (unsigned i = 0; i < n; i++)
        io_uring_buf_ring_add(*br, bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(n), (int)i);
    io_uring_buf_ring_advance(*br, (int)n);
    return 0;
}

/* Give buffer bid back to the kernel. */
static void buf_give_back(ur_t *u, unsigned bid)
{
    io_uring_buf_ring_add(u->br, u->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(u->nbufs), 0);
    io_uring_buf_ring_advance(u->br, 1);
}

/* A free submission entry, the queue handed to the kernel first when it is
 * full (an extra system call: a turn queued more than SQ_MAX). NULL when the
 * kernel takes none (its completion queue overflowing). */
static struct io_uring_sqe *sqe_get(ur_t *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe && io_uring_submit(&u->ring) >= 0)
        sqe = io_uring_get_sqe(&u->ring);
    return sqe;
}

/* The tag of c's operation op: which connection, which of its sockets. */
static uint64_t tag(const lg_loop_t *l, const lg_conn_t *c, unsigned op)
{
    return (uint64_t)(c - l->conns) << 32 | (uint64_t)(c->gen & 0xffffff) << 8 | op;
}

/* ---- the backend ---- */

static int ur_init(lg_loop_t *l)
{
    ur_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    l->io = u;
    u->multishot = (l->run->io_features & ENGINE_URING_MULTISHOT) != 0;
    size_t n = l->th->nconns;
    unsigned entries = pow2_at_least(2 * n + 16);
    int rc = ring_init(&u->ring, entries < SQ_MAX ? entries : SQ_MAX);
    if (rc < 0)
        return rc;
    u->ring_ok = 1;
    /* The ring's own descriptor, registered: io_uring_enter skips looking
     * it up (Linux 5.18; without it, a lookup per turn). */
    (void)io_uring_register_ring_fd(&u->ring);
    u->nbufs = pow2_at_least(2 * n);
    if (u->nbufs < BUFS_MIN)
        u->nbufs = BUFS_MIN;
    if (u->nbufs > BUFS_MAX)
        u->nbufs = BUFS_MAX;
    u->bufs = malloc((size_t)u->nbufs * BUF_SIZE);
    if (!u->bufs)
        return -ENOMEM;
    return bufs_init(&u->ring, u->bufs, u->nbufs, &u->br, &u->br_bytes);
}

static void ur_free(lg_loop_t *l)
{
    ur_t *u = l->io;
    if (!u)
        return;
    if (u->ring_ok)
        io_uring_queue_exit(&u->ring); /* cancels what is in flight */
    if (u->br)
        munmap(u->br, u->br_bytes);
    free(u->bufs);
    free(u);
    l->io = NULL;
}

static int ur_watch(lg_loop_t *l, lg_conn_t *c)
{
    struct io_uring_sqe *sqe = sqe_get(l->io);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
    io_uring_sqe_set_data64(sqe, tag(l, c, OP_CONNECT));
    return 0;
}

static void ur_forget(lg_loop_t *l, lg_conn_t *c)
{
    ur_t *u = l->io;
    /* Entries still in the submission queue name the descriptor by its
     * number, which the next socket (opened right after the close) is likely
     * to get: they go in now, on this socket. A system call, only when a
     * close falls in a turn that queued something. */
    if (io_uring_sq_ready(&u->ring) > 0)
        (void)io_uring_submit(&u->ring);
    /* Ends the RECV, the POLL_ADD and a SEND waiting for room: each holds
     * the socket open past close() until it completes. */
    (void)shutdown(c->fd, SHUT_RDWR);
    c->io &= IO_SEND;
}

static int ur_flush(lg_loop_t *l, lg_conn_t *c)
{
    if (c->io & IO_SEND)
        return 0; /* its completion sends the rest */
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        return 0;
    }
    struct io_uring_sqe *sqe = sqe_get(l->io);
    if (!sqe) {
        engine_failed(l, c, LG_ERR_WRITE, EBUSY);
        return -1;
    }
    io_uring_prep_send(sqe, c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(l, c, OP_SEND));
    c->io |= IO_SEND;
    c->pinned = 1;
    return 0;
}

/* Arm c's RECV. Returns 0, or -1 when c was closed. */
static int recv_arm(lg_loop_t *l, lg_conn_t *c)
{
    ur_t *u = l->io;
    struct io_uring_sqe *sqe = sqe_get(u);
    if (!sqe) {
        engine_failed(l, c, LG_ERR_READ, EBUSY);
        return -1;
    }
    if (u->multishot)
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    else
        io_uring_prep_recv(sqe, c->fd, NULL, BUF_SIZE, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, tag(l, c, OP_RECV));
    c->io |= IO_RECV;
    return 0;
}

static void on_connect(lg_loop_t *l, lg_conn_t *c, int res)
{
    int rc = res < 0 ? res : net_connect_result(c->fd);
    if (rc == 0 && recv_arm(l, c) < 0)
        return;
    engine_connected(l, c, rc);
}

/* A RECV completion for c, `current` when it is for c's open socket. */
static void on_recv(lg_loop_t *l, lg_conn_t *c, const struct io_uring_cqe *cqe, int current)
{
    ur_t *u = l->io;
    int res = cqe->res;
    int got = 0;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        if (current && res > 0 && engine_in_room(l, c, (size_t)res) == 0) {
            memcpy(c->in.data + c->in.len, u->bufs + (size_t)bid * BUF_SIZE, (size_t)res);
            got = 1;
        }
        buf_give_back(u, bid);
        if (current && res > 0 && !got)
            return; /* too large: c was closed */
    }
    if (!current)
        return;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->io &= ~IO_RECV;
    if (res == 0 || (res < 0 && res != -ENOBUFS)) {
        engine_eof(l, c, -res);
        return;
    }
    unsigned gen = c->gen;
    if (got)
        engine_received(l, c, (size_t)res);
    /* Ended (single shot, out of buffers, or the kernel's choice): armed
     * again, unless the answers closed c. */
    if (c->gen == gen && c->state == C_OPEN && !(c->io & IO_RECV))
        recv_arm(l, c);
}

static void on_send(lg_loop_t *l, lg_conn_t *c, int res, int current)
{
    c->io &= ~IO_SEND;
    c->pinned = 0;
    if (current) {
        if (res < 0) {
            engine_failed(l, c, LG_ERR_WRITE, -res);
            return;
        }
        c->out_off += (size_t)res;
        if (c->out_off == c->out_len)
            c->out_off = c->out_len = 0;
    }
    /* What waited behind this SEND: the rest of it, requests appended while
     * it flew, slots its room kept empty (or, for a SEND of the previous
     * socket, the first requests of this one). */
    if (c->state != C_OPEN || engine_pump(l, c) < 0)
        return;
    ur_flush(l, c);
}

static void on_cqe(lg_loop_t *l, const struct io_uring_cqe *cqe)
{
    uint64_t data = io_uring_cqe_get_data64(cqe);
    unsigned op = data & 0xff, gen = (data >> 8) & 0xffffff, idx = (unsigned)(data >> 32);
    if (idx >= l->th->nconns)
        return;
    lg_conn_t *c = &l->conns[idx];
    int current = gen == (c->gen & 0xffffff) && c->fd >= 0;
    switch (op) {
    case OP_CONNECT:
        if (current && c->state == C_CONNECTING)
            on_connect(l, c, cqe->res);
        break;
    case OP_RECV:
        on_recv(l, c, cqe, current && c->state == C_OPEN);
        break;
    case OP_SEND:
        on_send(l, c, cqe->res, current && c->state == C_OPEN);
        break;
    }
}

static int ur_wait(lg_loop_t *l, int64_t timeout_us)
{
    ur_t *u = l->io;
    struct __kernel_timespec ts = {.tv_sec = timeout_us / 1000000,
                                   .tv_nsec = (timeout_us % 1000000) * 1000};
    struct io_uring_cqe *cqe;
    /* The turn's one system call: what the last turn queued goes in, and
     * the wait for at least one completion, or the timeout. */
    int rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
    l->now = time_now_us();
    time_update();
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
        return rc;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe)
    {
        on_cqe(l, cqe);
        n++;
    }
    io_uring_cq_advance(&u->ring, n);
    return 0;
}

const lg_backend_t engine_uring = {
    .name = "io_uring",
    .init = ur_init,
    .free = ur_free,
    .watch = ur_watch,
    .flush = ur_flush,
    .forget = ur_forget,
    .wait = ur_wait,
};

/* ---- the probe ---- */

/* Does a multishot RECV with a provided buffer stay armed? One byte through
 * a socket pair says. Returns 1, 0 (the kernel refuses or ends it), or
 * -errno. */
static int probe_multishot(struct io_uring *ring)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    int rc = io_uring_submit(ring);
    if (rc >= 0 && write(sv[1], "x", 1) != 1)
        rc = -errno;
    struct io_uring_cqe *cqe = NULL;
    struct __kernel_timespec ts = {.tv_sec = 2};
    if (rc >= 0)
        rc = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
    if (rc >= 0)
        rc = cqe->res == 1 && (cqe->flags & IORING_CQE_F_MORE) ? 1 : 0;
    close(sv[0]);
    close(sv[1]);
    return rc;
}

int engine_uring_probe(unsigned *features, char *why, size_t whylen)
{
    struct io_uring ring;
    struct io_uring_probe *p = NULL;
    struct io_uring_buf_ring *br = NULL;
    size_t br_bytes = 0;
    static char buf[BUF_SIZE];
    int rc = ring_init(&ring, 8);
    *features = 0;
    if (rc < 0) {
        snprintf(why, whylen, "io_uring_setup: %s", strerror(-rc));
        return rc;
    }
    rc = -EOPNOTSUPP;
    if (!(ring.features & IORING_FEAT_EXT_ARG)) {
        snprintf(why, whylen, "no wait with a timeout, IORING_FEAT_EXT_ARG: Linux 5.11");
        goto out;
    }
    p = io_uring_get_probe_ring(&ring);
    if (!p) {
        snprintf(why, whylen, "no opcode probe, IORING_REGISTER_PROBE: Linux 5.6");
        goto out;
    }
    static const struct {
        int op;
        const char *name;
    } ops[] = {
        {IORING_OP_RECV, "RECV"}, {IORING_OP_SEND, "SEND"}, {IORING_OP_POLL_ADD, "POLL_ADD"}};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        if (!io_uring_opcode_supported(p, ops[i].op)) {
            snprintf(why, whylen, "no IORING_OP_%s", ops[i].name);
            goto out;
        }
    }
    if ((rc = bufs_init(&ring, buf, 1, &br, &br_bytes)) < 0) {
        snprintf(why, whylen, "no provided buffer rings (Linux 5.19): %s", strerror(-rc));
        goto out;
    }
    rc = probe_multishot(&ring);
    if (rc < 0) {
        snprintf(why, whylen, "a receive through a socket pair: %s", strerror(-rc));
        goto out;
    }
    if (rc == 1)
        *features |= ENGINE_URING_MULTISHOT;
    rc = 0;
out:
    if (p)
        io_uring_free_probe(p);
    io_uring_queue_exit(&ring);
    if (br)
        munmap(br, br_bytes);
    return rc;
}
