/* uring: an io_uring for an event loop over sockets (liburing), with one
 * ring of provided buffers that multishot receives take from, and the
 * check of what the kernel must have: the io_uring design's set-up
 * (servers/uring.c shows its model). Linked only into what calls it. */
#ifndef CORE_URING_H
#define CORE_URING_H

#include <liburing.h>
#include <stddef.h>

typedef struct uring {
    struct io_uring ring;
    struct io_uring_buf_ring *br; /* the buffers' addresses (group 0) */
    char *bufs;                   /* nbufs buffers of size bytes */
    unsigned nbufs, size;
    size_t bytes; /* of the mapping: the address ring, then the buffers */
    int returned; /* buffers given back since the last uring_bufs_advance */
} uring_t;

/* Set u up: a ring of sq submissions and cq completions with the best flags
 * this kernel takes; the features and operations a socket loop needs
 * (accept, receive, send, poll, cancel); nbufs provided buffers of size
 * bytes (nbufs a power of two), resident at once; and a multishot receive
 * with them, tried on a socket pair (Linux 6.0). Returns 0, or
 * -EOPNOTSUPP with why[] saying what this kernel lacks; u is then left as
 * it is, for a caller that exits. */
int uring_open(uring_t *u, unsigned sq, unsigned cq, unsigned nbufs, unsigned size, char *why,
               size_t whylen);

/* The buffer a completion names (IORING_CQE_F_BUFFER), or NULL. */
char *uring_buf(const uring_t *u, const struct io_uring_cqe *cqe);

/* Give back the buffer a completion named, once its bytes are copied out;
 * the kernel sees it at the next uring_bufs_advance. */
void uring_buf_return(uring_t *u, const struct io_uring_cqe *cqe);

/* Hand the kernel every buffer given back since the last call. */
void uring_bufs_advance(uring_t *u);

/* End the ring (its requests end with it), then unmap the buffers. */
void uring_close(uring_t *u);

#endif
