/* engine: the hot path. One loop per thread drives its share of the
 * connections, built like wrk: non-blocking sockets with TCP_NODELAY, every
 * complete response in what arrived parsed and checked, the freed pipeline
 * slots refilled and written at once, requests copied from precomputed
 * bytes, no allocation per request.
 *
 * The loop moves bytes through one of two backends (--engine, engine_io.h):
 * epoll (engine_epoll.c: one read per readiness, one write per refill, each
 * a system call) or io_uring (engine_uring.c: the sends and receives of all
 * the connections batched, one io_uring_enter per turn of the loop). Both
 * measure the same way: they differ in the system calls the load generator
 * makes, not in the kernel's TCP work, most of its cost (engine_uring.c).
 *
 * Closed loop: each connection keeps --pipeline requests in flight. Open loop
 * (-R): each connection sends on its own schedule and latency is measured from
 * the intended send time (coordinated omission corrected, as wrk2 does), the
 * uncorrected latency (from the actual send) kept beside it.
 * A request unanswered after --timeout is a timeout and its connection is
 * replaced, so a hung server is measured and the run ends on time. */
#ifndef LOADGEN_ENGINE_H
#define LOADGEN_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "hist.h"
#include "opts.h"
#include "persec.h"
#include "workload.h"

enum lg_err {
    LG_ERR_CONNECT,
    LG_ERR_READ,
    LG_ERR_WRITE,
    LG_ERR_TIMEOUT,
    LG_ERR_CLOSED,
    LG_ERR_MISMATCH,
    LG_ERR_4XX,
    LG_ERR_5XX,
    LG_ERR_N
};

/* The JSON names of the error classes, by enum lg_err. */
extern const char *const lg_err_names[LG_ERR_N];

#define LG_ERR_TEXT 160

/* Everything a thread measured. Threads' stats are merged with
 * engine_stats_merge once they have ended. */
typedef struct lg_stats {
    hist_t lat;        /* corrected latency (-R) or plain latency */
    hist_t unc;        /* uncorrected latency, -R only */
    uint64_t requests; /* right answers in the measured window */
    uint64_t errors[LG_ERR_N];
    int64_t first_us[LG_ERR_N];
    char first[LG_ERR_N][LG_ERR_TEXT];
    persec_t secs;            /* per second of the window */
    int64_t *acked, *unacked; /* increment mode: sums per key */
    uint64_t acked_requests, unacked_requests;
    int64_t finish_us; /* when the thread stopped */
    /* Requests still unanswered when the thread stopped (cut off by the end
     * of the run, or never answered), and the longest any of them had
     * waited then, from its intended send: the latencies leave them out, so
     * an age over the longest latency means the tail is understated. */
    uint64_t unfinished;
    int64_t unfinished_oldest_us;
} lg_stats_t;

/* What every thread shares, read-only once the threads start (except stop). */
typedef struct lg_run {
    const lg_opts_t *o;
    const lg_workload_t *w;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int64_t start_us;                 /* connections open from here */
    int64_t window_us;                /* measurement starts (after the warm-up) */
    int64_t end_us;                   /* measurement ends; INT64_MAX when only -n bounds it */
    atomic_int stop;                  /* SIGINT: end now */
    const struct lg_backend *backend; /* engine_epoll or engine_uring */
    unsigned io_features;             /* engine_uring_probe's ENGINE_URING_* bits */
    int publish;                      /* --stream, --live: threads publish each second (pub) */
} lg_run_t;

#define ENGINE_PUB_SLOTS 4 /* seconds the main thread may fall behind a live run's threads */

typedef struct lg_thread {
    const lg_run_t *run;
    unsigned id;
    unsigned first_conn, nconns; /* its share of the connections */
    uint64_t quota;              /* -n share; 0 = none */
    pthread_t tid;
    lg_stats_t st;
    hist_t sec_hist; /* the current second's latencies */
    int64_t cur_sec;
    _Atomic uint64_t live_requests, live_errors; /* for the progress line */
    /* With run->publish: the seconds the thread has finished and the main
     * thread has not taken yet (engine_take_published), second s in slot
     * s % ENGINE_PUB_SLOTS. */
    pthread_mutex_t pub_mu;
    /* The last second th will never add to again (its slot filled, if it had
     * anything): -1 before the first; INT64_MAX once th counts nothing more
     * (past the window's end, or ended). The main thread publishes second N
     * once every thread's pub_done reached N. */
    _Atomic int64_t pub_done;
    struct engine_pub {
        int64_t sec; /* the second the slot holds; -1: none */
        hist_t lat;
        uint64_t requests, errors;
    } pub[ENGINE_PUB_SLOTS];
    int rc; /* 0, or a negative errno if it could not run */
} lg_thread_t;

/* The backends (engine_io.h). engine_epoll is always there; engine_uring
 * (engine_uring.c, linked with liburing) only in bin/loadgen, and only
 * after engine_uring_probe said the kernel can run it. */
extern const struct lg_backend engine_epoll, engine_uring;

#define ENGINE_URING_MULTISHOT 1u /* receives are multishot (else one per completion) */

/* Can this kernel run the io_uring engine (io_uring allowed, its
 * submit-and-wait with a timeout, send, receive and poll, provided buffer
 * rings)? Returns 0 with *features set (ENGINE_URING_*), or -errno with what
 * is missing in why. Opens and closes a ring and a socket pair. */
int engine_uring_probe(unsigned *features, char *why, size_t whylen);

/* Thread body: runs th's connections until the run ends. */
void *engine_thread(void *th);

/* Before th starts: its publication slots are empty, nothing is done. */
void engine_pub_init(lg_thread_t *th);

/* Take second `sec` of what th has published (the latencies into h, the
 * answers and errors added to *requests and *errors), if it has finished
 * it; a leftover of an older second in its slot (one published without th's
 * part, "partial") is dropped. Called by the main thread while th runs. */
void engine_take_published(lg_thread_t *th, int64_t sec, hist_t *h, uint64_t *requests,
                           uint64_t *errors);

/* Merge src's stats into dst (dst zeroed first for the first merge; keys is
 * the increment key count). Per-second data are added second by second.
 * Returns 0 or -ENOMEM. */
int engine_stats_merge(lg_stats_t *dst, const lg_stats_t *src, unsigned keys);

/* Free what a thread's (or merged) stats hold. */
void engine_stats_free(lg_stats_t *st);

#endif
