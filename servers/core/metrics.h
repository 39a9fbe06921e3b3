/* metrics: counters every server keeps, rendered as Prometheus text.
 *
 * Each thread counts into its own block (no shared cache line, no atomic
 * read-modify-write on the request path); /metrics sums the blocks. */
#ifndef CORE_METRICS_H
#define CORE_METRICS_H

#include <stdint.h>

#include "buf.h"

enum metric_cmd {
    MC_HELLO,
    MC_PING,
    MC_WAIT,
    MC_BURN,
    MC_STREAM,
    MC_METRICS,
    MC_HEALTHZ,
    MC_EXT,
    MC_OTHER,
    MC_N
};
/* Status of a request: line protocol ok/err, or the HTTP status. */
enum metric_status {
    MS_OK,
    MS_ERR,
    MS_200,
    MS_400,
    MS_404,
    MS_405,
    MS_408,
    MS_413,
    MS_414,
    MS_415,
    MS_422,
    MS_431,
    MS_500,
    MS_501,
    MS_502,
    MS_503,
    MS_504,
    MS_505,
    MS_OTHER,
    MS_N
};
enum metric_error {
    ME_READ,
    ME_WRITE,
    ME_HEADER_TIMEOUT,
    ME_IDLE_TIMEOUT,
    ME_LINE_TOO_LONG,
    ME_BAD_REQUEST,
    ME_REFUSED,
    ME_ACCEPT,
    ME_N
};

typedef struct metrics {
    uint64_t requests[MC_N][MS_N];
    uint64_t accepted; /* connections accepted */
    uint64_t closed;   /* connections closed (open = accepted - closed) */
    uint64_t errors[ME_N];
    int loop;                  /* event loop index + 1 (metrics_loop), 0 = not a loop */
    uint64_t listener_wakeups; /* a loop's wake-ups with its listener ready */
    uint64_t listener_wasted;  /* of those, the ones that accepted nothing */
    int in_use;                /* owned by a live thread */
    struct metrics *next;
} metrics_t;

/* This thread's block, created on first use (NULL only if out of memory, in
 * which case counting is skipped). */
metrics_t *metrics_local(void);

/* Status code to its counter slot. */
int metrics_status_slot(int http_status);

/* Count one request. */
void metrics_request(int cmd, int status_slot);
/* Count one error of a kind. */
void metrics_error(int kind);
/* Admit a new connection if fewer than max are open (0: no limit), in one
 * atomic step, so that loops accepting at once can't overshoot the limit
 * together. Returns 0 (admitted and counted), or -EBUSY (not counted). */
int metrics_conn_admit(uint64_t max);

/* Count an admitted connection closed. (metrics_conn(1) counts one opened
 * without a limit.) */
void metrics_conn(int opened);

/* Connections open now. */
uint64_t metrics_open_conns(void);

/* Name the calling thread an event loop, `index` (0, 1, ...): /metrics then
 * shows its share of the connections and its listener wake-ups under
 * loop="index" (loop_connections_accepted_total, loop_listener_wakeups_total,
 * loop_listener_wakeups_wasted_total), how the kernel spread a design's
 * connections over its loops. Call it once, before the loop accepts. */
void metrics_loop(int index);

/* Count one wake-up of the calling loop with its listening socket reported
 * ready, and whether it accepted a connection then: a wake-up that accepted
 * none is wasted (another loop took the connection first: the thundering
 * herd). */
void metrics_listener_wakeup(int accepted);

/* A function that appends more Prometheus text (a tenant table, say). */
typedef void (*metrics_writer_fn)(buf_t *out, void *ctx);
/* Add a writer called at the end of every metrics_render. Not thread-safe:
 * call before the server starts its threads. */
void metrics_add_writer(metrics_writer_fn fn, void *ctx);

/* Append the Prometheus text format of every counter to out. 0 or -ENOMEM. */
int metrics_render(buf_t *out);

#endif
