/* scenario: the lab's adversarial connections, run by their own thread beside
 * the measured load so they never slow its loop.
 *
 * --idle N        N connections that connect and then send nothing (c10k);
 *                 spread over 127.0.0.x source addresses when N exceeds what
 *                 one source address can open to one port.
 * --slowloris N   N connections sending a request one byte per second.
 * --slow-readers N N connections asking for a huge STREAM and reading it at
 *                 --slow-read-rate bytes per second.
 * A connection the server closes is opened again on the next tick, so the
 * counts stay what was asked; one whose connect fails is counted and left. */
#ifndef LOADGEN_SCENARIO_H
#define LOADGEN_SCENARIO_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "opts.h"

enum { SCEN_IDLE, SCEN_SLOWLORIS, SCEN_SLOW_READERS, SCEN_N };

/* The JSON names of the scenarios, by index. */
extern const char *const scenario_names[SCEN_N];

typedef struct scen_stats {
    uint64_t requested; /* connections asked for */
    uint64_t opened;    /* successful connects, reconnects included */
    uint64_t open;      /* open now (at the end of the run in the report) */
    uint64_t failed;    /* connects that failed */
    uint64_t closed;    /* connections the server closed */
    uint64_t bytes;     /* slowloris: bytes sent; slow readers: bytes read */
} scen_stats_t;

typedef struct scenario {
    const lg_opts_t *o;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    pthread_t tid;
    int running;
    atomic_int stop;
    atomic_int ready;        /* every connection has made its first attempt */
    scen_stats_t st[SCEN_N]; /* read them after scenario_stop */
    char first_error[160];
} scenario_t;

/* Start the scenario thread if any scenario was asked for (otherwise a
 * no-op). Returns 0 or a negative errno with err filled. */
int scenario_start(scenario_t *s, const lg_opts_t *o, const struct sockaddr_storage *addr,
                   socklen_t addrlen, char *err, size_t errlen);

/* Wait until every scenario connection has made its first connect attempt,
 * or timeout_ms passed. Returns 1 when ready. */
int scenario_wait_ready(scenario_t *s, int64_t timeout_ms);

/* Stop the thread and close its connections; the stats are final after. */
void scenario_stop(scenario_t *s);

#endif
