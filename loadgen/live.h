/* live: the run as it goes, second by second, for other tools and for a
 * browser.
 *
 * --stream FD writes one JSON line a second on FD (live_sec_json); --live
 * PORT serves, on 127.0.0.1, a dashboard page (loadgen/live.html, built in)
 * at / and the same lines as server-sent events at /events. Both are fed by
 * the main thread's once-a-second loop, which also serves the page: the
 * server is a poll() over a listener and a few browsers, driven from
 * live_poll in that loop, with the core's HTTP parser (servers/core/http.h)
 * reading their requests. A browser that connects late is sent every line
 * so far first, so its charts start at the beginning. */
#ifndef LOADGEN_LIVE_H
#define LOADGEN_LIVE_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* One second of the measured window, as the stream and the page show it. */
typedef struct live_sec {
    int64_t sec;               /* second of the window, from 0 */
    double elapsed_s, left_s;  /* since the window opened; left_s < 0: unknown (-n) */
    double span_s;             /* the second's length (the last one may be shorter) */
    uint64_t requests, errors; /* answered (right) and failed in that second */
    uint64_t p50, p99, p999;   /* latency, microseconds (0: no answers) */
    int server;                /* the fields below are there (--server-pid) */
    double user_s, system_s;   /* the server's CPU time in that second */
    long rss_kb;               /* its resident memory at the end of the second */
    uint64_t vcsw, nvcsw;      /* its voluntary and involuntary context switches then */
    long conns;                /* its open TCP connections (listeners not counted) */
    int partial;               /* a thread had not finished it: its part is missing */
} live_sec_t;

/* The JSON line of s (type "sec"), without its newline, into a malloc'd
 * string the caller frees; target is loadgen's TARGET. NULL when out of
 * memory. */
char *live_sec_json(const live_sec_t *s, const char *target);

#define LIVE_MAX_CLIENTS                                                                           \
    32                           /* browsers and event streams at once (a new one evicts the \
                             * oldest that is not a stream; all streams: refused) */
#define LIVE_HEAD_MS   5000      /* a request head must come whole within this */
#define LIVE_DRAIN_MS  1000      /* an answered client's input is read and dropped this long */
#define LIVE_DRAIN_MAX (1 << 20) /* and this much at most */

typedef struct live_client {
    int fd;           /* -1: free slot */
    buf_t in;         /* the request so far */
    buf_t out;        /* a page's answer not yet sent */
    int events;       /* an /events subscriber: sent history from `sent` on */
    size_t sent;      /* bytes of the history it has had (absolute offset) */
    int64_t since_ms; /* CLOCK_MONOTONIC: accepted, or (done) answered */
    int done;         /* a page answered, the write side shut: draining its input */
    size_t drained;   /* bytes of input discarded since */
} live_client_t;

typedef struct live {
    int fd; /* the listener; -1 when --live is off */
    int port;
    buf_t hist; /* every event so far, as sent ("data: ...\n\n") */
    live_client_t clients[LIVE_MAX_CLIENTS];
    int64_t accept_after_ms; /* accept failed (out of descriptors): the listener rests until then */
} live_t;

/* Serve the dashboard on 127.0.0.1:port (0 picks a free port, read back
 * in lv->port). Returns 0, or -errno with err filled. */
int live_open(live_t *lv, int port, char *err, size_t errlen);

/* A live_t that serves nothing: live_poll only sleeps, the rest do nothing. */
void live_init_off(live_t *lv);

/* Queue one event (a JSON text without newlines) for every subscriber,
 * present and future. Returns 0 or -ENOMEM (the event is lost). */
int live_publish(live_t *lv, const char *json);

/* Serve for up to timeout_ms: accept, read requests, answer, send queued
 * events. Returns when the time is up (at once when nothing is pending
 * and timeout_ms is 0). Every failure is a browser's: it is closed. */
void live_poll(live_t *lv, int timeout_ms);

/* End the event streams with an `end` event (end_json its data: the run's
 * totals), give the browsers up to linger_ms to take what is queued, and
 * close everything. */
void live_close(live_t *lv, const char *end_json, int linger_ms);

#endif
