/* engine: the hot path. One epoll loop per thread drives its share of the
 * connections, built like wrk: non-blocking sockets with TCP_NODELAY, one
 * read per readiness with every complete response in it parsed and checked,
 * the freed pipeline slots refilled and written with one write, requests
 * copied from precomputed bytes, no allocation per request.
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
#include "workload.h"

enum lg_err {
    LG_ERR_CONNECT, LG_ERR_READ, LG_ERR_WRITE, LG_ERR_TIMEOUT, LG_ERR_CLOSED,
    LG_ERR_MISMATCH, LG_ERR_4XX, LG_ERR_5XX, LG_ERR_N
};

/* The JSON names of the error classes, by enum lg_err. */
extern const char *const lg_err_names[LG_ERR_N];

#define LG_ERR_TEXT 160

/* One second of the measured window, as one thread saw it. */
typedef struct lg_sec {
    uint64_t requests, errors;
    uint32_t n;        /* non-empty latency buckets */
    uint32_t *pairs;   /* n pairs (bucket index, count) */
} lg_sec_t;

/* Everything a thread measured. Threads' stats are merged with
 * engine_stats_merge once they have ended. */
typedef struct lg_stats {
    hist_t lat;        /* corrected latency (-R) or plain latency */
    hist_t unc;        /* uncorrected latency, -R only */
    uint64_t requests; /* right answers in the measured window */
    uint64_t errors[LG_ERR_N];
    int64_t first_us[LG_ERR_N];
    char first[LG_ERR_N][LG_ERR_TEXT];
    lg_sec_t *secs;    /* per second of the window */
    size_t nsecs;
    int64_t *acked, *unacked;           /* increment mode: sums per key */
    uint64_t acked_requests, unacked_requests;
    int64_t finish_us; /* when the thread stopped */
} lg_stats_t;

/* What every thread shares, read-only once the threads start (except stop). */
typedef struct lg_run {
    const lg_opts_t *o;
    const lg_workload_t *w;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int64_t start_us;        /* connections open from here */
    int64_t window_us;       /* measurement starts (after the warm-up) */
    int64_t end_us;          /* measurement ends; INT64_MAX when only -n bounds it */
    atomic_int stop;         /* SIGINT: end now */
} lg_run_t;

typedef struct lg_thread {
    const lg_run_t *run;
    unsigned id;
    unsigned first_conn, nconns; /* its share of the connections */
    uint64_t quota;              /* -n share; 0 = none */
    pthread_t tid;
    lg_stats_t st;
    hist_t sec_hist;             /* the current second's latencies */
    int64_t cur_sec;
    _Atomic uint64_t live_requests, live_errors; /* for the progress line */
    int rc;                      /* 0, or a negative errno if it could not run */
} lg_thread_t;

/* Thread body: runs th's connections until the run ends. */
void *engine_thread(void *th);

/* Merge src's stats into dst (dst zeroed first for the first merge; keys is
 * the increment key count). Per-second data are added second by second.
 * Returns 0 or -ENOMEM. */
int engine_stats_merge(lg_stats_t *dst, const lg_stats_t *src, unsigned keys);

/* The p99 of second i of merged stats (microseconds; 0 when it had none). */
uint64_t engine_sec_p99(const lg_sec_t *s);

/* Free what a thread's (or merged) stats hold. */
void engine_stats_free(lg_stats_t *st);

#endif
