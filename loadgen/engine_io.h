/* engine_io: the engine's loop and its I/O backends, as Redis's ae.c and
 * ae_epoll.c. engine.c is the loop every backend shares: the connections,
 * the requests queued, the responses checked, the timeouts and the -R
 * schedule. A backend (engine_epoll.c, engine_uring.c) only moves bytes: it
 * starts watching a connecting socket, writes what the loop queued, and
 * waits for I/O, handing what happened back through the engine_ callbacks
 * below. Only the engine and its backends include this header. */
#ifndef LOADGEN_ENGINE_IO_H
#define LOADGEN_ENGINE_IO_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/timer.h"
#include "engine.h"

enum { C_IDLE, C_CONNECTING, C_OPEN, C_DONE };

/* One request in flight. */
typedef struct lg_slot {
    int64_t intended_us; /* when it should have been sent (-R), else when it was */
    int64_t sent_us;
    uint32_t variant;
    uint32_t key; /* increment mode */
    int32_t value;
} lg_slot_t;

typedef struct lg_conn {
    int fd;
    int state;
    buf_t in;
    char *out; /* requests waiting to be written: out[out_off..out_len) */
    size_t out_off, out_len;
    int pinned;      /* the backend's send reads out[]: the loop must not move its bytes */
    lg_slot_t *ring; /* in flight, oldest at head */
    unsigned head, count;
    check_state_t ck;
    timer_node_t tmo;   /* ms: the oldest request's timeout, or the connect timeout */
    timer_node_t pace;  /* us: the next intended send (-R), or a reconnect pause */
    uint64_t issued;    /* requests this connection has sent */
    double next_us;     /* -R: intended time of the next request */
    unsigned io;        /* the backend's: epoll's registered events, io_uring's requests */
    unsigned read_full; /* epoll: the last read filled its room (the next gets READ_MAX) */
    unsigned gen;       /* bumped by every close: tells a new socket's I/O from the last one's */
} lg_conn_t;

typedef struct lg_loop {
    lg_thread_t *th;
    const lg_run_t *run;
    const lg_opts_t *o;
    const lg_workload_t *w;
    const struct lg_backend *be;
    void *io; /* the backend's per-thread state */
    lg_conn_t *conns;
    size_t out_cap; /* bytes of each connection's out[] */
    /* A node per connection in each, room reserved by loop_init: the
     * (void) timers_set calls cannot fail. */
    timers_t tmo;  /* ms deadlines (core timers) */
    timers_t pace; /* us deadlines, same structure */
    uint64_t rng;
    uint64_t issued;    /* toward the -n quota */
    int stopping;       /* no new requests */
    int64_t now;        /* us, read after each wake-up and each read */
    double interval_us; /* -R: time between requests of one connection */
} lg_loop_t;

/* An I/O backend: its functions get the loop, and the connection they act
 * on. The loop is single-threaded: a backend's state is the thread's own. */
typedef struct lg_backend {
    const char *name; /* "epoll", "uring": config.engine in the JSON */
    /* Make the thread's state (l->io) for l->th->nconns connections.
     * Returns 0 or -errno; free is called either way. */
    int (*init)(lg_loop_t *l);
    void (*free)(lg_loop_t *l);
    /* c->fd's non-blocking connect is under way: call engine_connected when
     * it ends. Returns 0, or -errno when it cannot be watched. */
    int (*watch)(lg_loop_t *l, lg_conn_t *c);
    /* Write c->out[out_off..out_len), now or once the socket takes it; the
     * bytes written advance out_off, and out_off == out_len resets both to
     * 0. A write error closes c through engine_failed. Returns 0, or -1
     * when c was closed. */
    int (*flush)(lg_loop_t *l, lg_conn_t *c);
    /* c->fd is about to be closed: end its I/O; what is still in flight
     * for it must not reach the next socket of c. */
    void (*forget)(lg_loop_t *l, lg_conn_t *c);
    /* Wait up to timeout_us (0: do not sleep) for I/O and hand it to the
     * loop: engine_connected, engine_received, engine_eof, engine_failed,
     * engine_pump. l->now is the time after the wait. Returns 0, or -errno
     * when the backend failed (the thread ends with it). */
    int (*wait)(lg_loop_t *l, int64_t timeout_us);
} lg_backend_t;

/* c's connect ended: err is 0 or -errno (counted, and c reconnected). */
void engine_connected(lg_loop_t *l, lg_conn_t *c, int err);

/* Room for `want` more bytes in c->in, grown up to the largest answer a
 * response may need. Returns 0, or -1 when c was closed (too large). */
int engine_in_room(lg_loop_t *l, lg_conn_t *c, size_t want);

/* n bytes were appended to c->in (n > 0): check the responses complete
 * now, and queue and flush the requests that take their places. */
void engine_received(lg_loop_t *l, lg_conn_t *c, size_t n);

/* The server closed c (err 0) or a read failed (err = errno). */
void engine_eof(lg_loop_t *l, lg_conn_t *c, int err);

/* An I/O error of class cls (LG_ERR_WRITE...) on c, err = errno: c is
 * counted, closed and replaced. */
void engine_failed(lg_loop_t *l, lg_conn_t *c, int cls, int err);

/* Queue as many requests on c as the pipeline, the schedule, the quota and
 * the room in c->out allow, and flush them. Returns 0, or -1 when c was
 * closed. */
int engine_pump(lg_loop_t *l, lg_conn_t *c);

#endif
