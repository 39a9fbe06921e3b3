#include "metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

static pthread_mutex_t blocks_lock = PTHREAD_MUTEX_INITIALIZER;
static metrics_t *blocks;
static __thread metrics_t *local;
static pthread_key_t owner_key;
static pthread_once_t owner_once = PTHREAD_ONCE_INIT;

/* A thread that exits hands its block back for the next thread to count
 * into: the sums stay right and thread-per-connection doesn't leak. */
static void release(void *p)
{
    metrics_t *m = p;
    pthread_mutex_lock(&blocks_lock);
    m->in_use = 0;
    pthread_mutex_unlock(&blocks_lock);
}

static void make_key(void)
{
    pthread_key_create(&owner_key, release);
}

#define MAX_WRITERS 8
static struct {
    metrics_writer_fn fn;
    void *ctx;
} writers[MAX_WRITERS];
static int nwriters;

static const char *cmd_names[MC_N] = {"hello",   "ping",    "wait", "burn", "stream",
                                      "metrics", "healthz", "ext",  "other"};
static const char *status_names[MS_N] = {"ok",  "err", "200", "400", "404",  "405", "408",
                                         "413", "414", "415", "422", "431",  "500", "501",
                                         "502", "503", "504", "505", "other"};
static const int status_codes[MS_N] = {0,   0,   200, 400, 404, 405, 408, 413, 414, 415,
                                       422, 431, 500, 501, 502, 503, 504, 505, 0};
static const char *error_names[ME_N] = {"read",         "write",         "header_timeout",
                                        "idle_timeout", "line_too_long", "bad_request",
                                        "refused",      "accept"};

metrics_t *metrics_local(void)
{
    if (local)
        return local;
    pthread_once(&owner_once, make_key);
    pthread_mutex_lock(&blocks_lock);
    metrics_t *m = blocks;
    while (m && m->in_use)
        m = m->next;
    if (!m && (m = calloc(1, sizeof *m)) != NULL) {
        m->next = blocks;
        blocks = m;
    }
    if (m)
        m->in_use = 1;
    pthread_mutex_unlock(&blocks_lock);
    if (m)
        pthread_setspecific(owner_key, m);
    local = m;
    return m;
}

int metrics_status_slot(int code)
{
    for (int i = MS_200; i < MS_OTHER; i++)
        if (status_codes[i] == code)
            return i;
    return MS_OTHER;
}

/* Relaxed atomics: one writer per block, readers from other threads may see
 * a slightly old value but never a torn one. */
static void bump(uint64_t *c)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

void metrics_request(int cmd, int slot)
{
    metrics_t *m = metrics_local();
    if (m)
        bump(&m->requests[cmd][slot]);
}

void metrics_error(int kind)
{
    metrics_t *m = metrics_local();
    if (m)
        bump(&m->errors[kind]);
}

/* Connections open now: one counter for the process, because admission
 * must see every thread's connections at once (the per-thread blocks are
 * only summed now and then). One atomic add per connection, none per
 * request. */
static uint64_t open_conns;

int metrics_conn_admit(uint64_t max)
{
    uint64_t n = __atomic_add_fetch(&open_conns, 1, __ATOMIC_RELAXED);
    if (max && n > max) {
        /* Over the limit by our own add: take it back. Another thread may
         * see the count one too high meanwhile and refuse too; none can be
         * admitted past max. */
        __atomic_sub_fetch(&open_conns, 1, __ATOMIC_RELAXED);
        return -EBUSY;
    }
    metrics_t *m = metrics_local();
    if (m)
        bump(&m->accepted);
    return 0;
}

void metrics_conn(int opened)
{
    if (opened) {
        metrics_conn_admit(0); /* cannot fail without a limit */
        return;
    }
    __atomic_sub_fetch(&open_conns, 1, __ATOMIC_RELAXED);
    metrics_t *m = metrics_local();
    if (m)
        bump(&m->closed);
}

static metrics_t *first_block(void)
{
    pthread_mutex_lock(&blocks_lock);
    metrics_t *m = blocks;
    pthread_mutex_unlock(&blocks_lock);
    return m;
}

uint64_t metrics_open_conns(void)
{
    return __atomic_load_n(&open_conns, __ATOMIC_RELAXED);
}

void metrics_loop(int index)
{
    metrics_t *m = metrics_local();
    if (m)
        __atomic_store_n(&m->loop, index + 1, __ATOMIC_RELAXED);
}

void metrics_listener_wakeup(int accepted)
{
    metrics_t *m = metrics_local();
    if (!m)
        return;
    bump(&m->listener_wakeups);
    if (!accepted)
        bump(&m->listener_wasted);
}

/* The loops' counters (metrics_loop), one line per loop in index order. A
 * loop thread's block outlives it only at the process's end, so no other
 * thread's counts join a loop's. */
static int render_loops(buf_t *out)
{
    static const struct {
        const char *name, *help;
    } series[] = {
        {"loop_connections_accepted_total", "Connections accepted, by event loop."},
        {"loop_listener_wakeups_total",
         "Wake-ups of an event loop with its listening socket ready."},
        {"loop_listener_wakeups_wasted_total",
         "Wake-ups of an event loop on its listener that accepted nothing."},
    };
    int rc = 0, loops = 0;
    for (metrics_t *m = first_block(); m; m = m->next) {
        int l = __atomic_load_n(&m->loop, __ATOMIC_RELAXED);
        if (l > loops)
            loops = l;
    }
    for (size_t k = 0; loops && k < sizeof series / sizeof *series; k++) {
        rc |= buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", series[k].name, series[k].help,
                         series[k].name);
        for (int l = 1; l <= loops; l++)
            for (metrics_t *m = first_block(); m; m = m->next) {
                if (__atomic_load_n(&m->loop, __ATOMIC_RELAXED) != l)
                    continue;
                uint64_t v = k == 0   ? get(&m->accepted)
                             : k == 1 ? get(&m->listener_wakeups)
                                      : get(&m->listener_wasted);
                rc |= buf_printf(out, "%s{loop=\"%d\"} %llu\n", series[k].name, l - 1,
                                 (unsigned long long)v);
            }
    }
    return rc;
}

void metrics_add_writer(metrics_writer_fn fn, void *ctx)
{
    if (nwriters < MAX_WRITERS) {
        writers[nwriters].fn = fn;
        writers[nwriters].ctx = ctx;
        nwriters++;
    }
}

int metrics_render(buf_t *out)
{
    metrics_t sum = {0};
    int rc = 0;
    for (metrics_t *m = first_block(); m; m = m->next) {
        for (int c = 0; c < MC_N; c++)
            for (int s = 0; s < MS_N; s++)
                sum.requests[c][s] += get(&m->requests[c][s]);
        for (int e = 0; e < ME_N; e++)
            sum.errors[e] += get(&m->errors[e]);
        sum.accepted += get(&m->accepted);
        sum.closed += get(&m->closed);
    }
    rc |= buf_printf(out, "# HELP requests_total Requests answered, by command and status.\n"
                          "# TYPE requests_total counter\n");
    for (int c = 0; c < MC_N; c++)
        for (int s = 0; s < MS_N; s++)
            if (sum.requests[c][s])
                rc |=
                    buf_printf(out, "requests_total{cmd=\"%s\",status=\"%s\"} %llu\n", cmd_names[c],
                               status_names[s], (unsigned long long)sum.requests[c][s]);
    rc |=
        buf_printf(out,
                   "# HELP connections_open Connections open now.\n"
                   "# TYPE connections_open gauge\n"
                   "connections_open %llu\n"
                   "# HELP connections_accepted_total Connections accepted.\n"
                   "# TYPE connections_accepted_total counter\n"
                   "connections_accepted_total %llu\n"
                   "# HELP errors_total Errors, by kind.\n"
                   "# TYPE errors_total counter\n",
                   /* blocks are read one by one: never print a wrapped count */
                   (unsigned long long)(sum.accepted > sum.closed ? sum.accepted - sum.closed : 0),
                   (unsigned long long)sum.accepted);
    for (int e = 0; e < ME_N; e++)
        rc |= buf_printf(out, "errors_total{kind=\"%s\"} %llu\n", error_names[e],
                         (unsigned long long)sum.errors[e]);
    rc |= render_loops(out);
    for (int i = 0; i < nwriters; i++)
        writers[i].fn(out, writers[i].ctx);
    return rc ? -ENOMEM : 0;
}
