/* uring: the io_uring design's set-up (uring.h): the ring, its provided
 * buffers, and the check of what the kernel must have. */
#include "uring.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

char *uring_buf(const uring_t *u, const struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_BUFFER))
        return NULL;
    unsigned short bid = (unsigned short)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    return u->bufs + (size_t)bid * u->size;
}

void uring_buf_return(uring_t *u, const struct io_uring_cqe *cqe)
{
    unsigned short bid = (unsigned short)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    io_uring_buf_ring_add(u->br, u->bufs + (size_t)bid * u->size, u->size, bid,
                          io_uring_buf_ring_mask(u->nbufs), u->returned++);
}

void uring_bufs_advance(uring_t *u)
{
    io_uring_buf_ring_advance(u->br, u->returned);
    u->returned = 0;
}

void uring_close(uring_t *u)
{
    io_uring_queue_exit(&u->ring);
    if (u->br)
        munmap(u->br, u->bytes);
    u->br = NULL;
}

/* A multishot receive on a socket pair, with a provided buffer: Linux 6.0
 * (multishot accept came in 5.19). Returns 0, or -errno. */
static int try_multishot_recv(uring_t *u)
{
    int sv[2], rc = -ETIME, more = 1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    struct io_uring_sqe *e = io_uring_get_sqe(&u->ring);
    io_uring_prep_recv_multishot(e, sv[0], NULL, 0, 0);
    e->flags |= IOSQE_BUFFER_SELECT;
    e->buf_group = 0;
    io_uring_sqe_set_data64(e, 1);
    if (write(sv[1], "x", 1) != 1)
        rc = -EIO;
    while (more) { /* the byte, then the end of the receive (cancelled) */
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 2};
        if (io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL) < 0)
            break; /* no answer: not supported as it should be */
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            uring_buf_return(u, cqe);
            uring_bufs_advance(u);
        }
        if (cqe->user_data == 1) {
            more = cqe->flags & IORING_CQE_F_MORE;
            if (rc == -ETIME)
                rc = cqe->res == 1 && more ? 0 : cqe->res < 0 ? cqe->res : -EINVAL;
            if (more) {
                struct io_uring_sqe *c = io_uring_get_sqe(&u->ring);
                io_uring_prep_cancel64(c, 1, 0);
                io_uring_sqe_set_data64(c, 0);
                c->flags |= IOSQE_CQE_SKIP_SUCCESS;
            }
        }
        io_uring_cqe_seen(&u->ring, cqe);
    }
    close(sv[0]);
    close(sv[1]);
    return more ? -ETIME : rc;
}

/* What uring_open does; returns NULL or why (a kernel that lacks a part). */
static const char *setup(uring_t *u, unsigned sq, unsigned cq, char *why, size_t len)
{
    /* The best flags first: one thread submits (6.0), and completions are
     * run when it waits rather than by interrupting it (6.1, then 5.19). */
    static const unsigned flags[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                                     IORING_SETUP_COOP_TASKRUN, 0};
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof flags / sizeof *flags && rc == -EINVAL; i++) {
        struct io_uring_params p = {.flags = flags[i] | IORING_SETUP_CQSIZE, .cq_entries = cq};
        rc = io_uring_queue_init_params(sq, &u->ring, &p);
    }
    if (rc < 0) {
        snprintf(why, len, "io_uring is not available: io_uring_setup: %s%s", strerror(-rc),
                 rc == -ENOSYS  ? " (a kernel without io_uring)"
                 : rc == -EPERM ? " (disabled: kernel.io_uring_disabled, or a seccomp profile)"
                                : "");
        return why;
    }
    static const struct {
        unsigned bit;
        const char *name;
    } feats[] = {{IORING_FEAT_NODROP, "IORING_FEAT_NODROP (Linux 5.5)"},
                 {IORING_FEAT_FAST_POLL, "IORING_FEAT_FAST_POLL (Linux 5.7)"},
                 {IORING_FEAT_EXT_ARG, "IORING_FEAT_EXT_ARG (Linux 5.11)"},
                 {IORING_FEAT_CQE_SKIP, "IORING_FEAT_CQE_SKIP (Linux 5.17)"}};
    for (size_t i = 0; i < sizeof feats / sizeof *feats; i++)
        if (!(u->ring.features & feats[i].bit)) {
            snprintf(why, len, "io_uring lacks %s", feats[i].name);
            return why;
        }
    struct io_uring_probe *probe = io_uring_get_probe_ring(&u->ring);
    static const struct {
        int op;
        const char *name;
    } ops[] = {{IORING_OP_ACCEPT, "IORING_OP_ACCEPT"},
               {IORING_OP_RECV, "IORING_OP_RECV"},
               {IORING_OP_SEND, "IORING_OP_SEND"},
               {IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD"},
               {IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL"}};
    if (!probe) {
        snprintf(why, len, "io_uring cannot be probed for its operations (Linux 5.6)");
        return why;
    }
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (!io_uring_opcode_supported(probe, ops[i].op)) {
            snprintf(why, len, "io_uring lacks %s", ops[i].name);
            io_uring_free_probe(probe);
            return why;
        }
    io_uring_free_probe(probe);
    /* Best effort: a registered ring descriptor saves a lookup per enter (5.18). */
    (void)io_uring_register_ring_fd(&u->ring);

    /* Touched now: the kernel writes every buffer in turn, so they would
     * all become resident anyway (and look like a leak in the first bursts). */
    u->bytes = u->nbufs * sizeof(struct io_uring_buf) + (size_t)u->nbufs * u->size;
    void *mem = mmap(NULL, u->bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) {
        snprintf(why, len, "no memory for the receive buffers: %s", strerror(errno));
        return why;
    }
    u->br = mem; /* the ring of buffer addresses first, page-aligned, then the buffers */
    u->bufs = (char *)mem + u->nbufs * sizeof(struct io_uring_buf);
    io_uring_buf_ring_init(u->br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uintptr_t)u->br, .ring_entries = u->nbufs, .bgid = 0};
    if ((rc = io_uring_register_buf_ring(&u->ring, &reg, 0)) < 0) {
        snprintf(why, len, "io_uring lacks provided buffer rings (Linux 5.19): %s", strerror(-rc));
        return why;
    }
    for (unsigned i = 0; i < u->nbufs; i++)
        io_uring_buf_ring_add(u->br, u->bufs + (size_t)i * u->size, u->size, (unsigned short)i,
                              io_uring_buf_ring_mask(u->nbufs), (int)i);
    io_uring_buf_ring_advance(u->br, (int)u->nbufs);
    if ((rc = try_multishot_recv(u)) < 0) {
        snprintf(why, len, "io_uring lacks multishot receive (Linux 6.0): %s", strerror(-rc));
        return why;
    }
    return NULL;
}

int uring_open(uring_t *u, unsigned sq, unsigned cq, unsigned nbufs, unsigned size, char *why,
               size_t whylen)
{
    memset(u, 0, sizeof *u);
    u->nbufs = nbufs;
    u->size = size;
    return setup(u, sq, cq, why, whylen) ? -EOPNOTSUPP : 0;
}
