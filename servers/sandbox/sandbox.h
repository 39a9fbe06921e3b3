/* sandbox: tenant programs (Lua 5.4) run in a fresh, isolated sandbox for
 * every request, within per-tenant memory and time limits.
 *
 * A tenant is DIR/<name>.lua defining a global `handle(req)`. Each runner (one
 * per thread that serves requests) keeps, per tenant it has served, a Lua
 * state in its own fixed-address arena: built once (libraries, the tenant's
 * chunk), then snapshotted. Every request first restores the snapshot (it
 * copies back the pages requests write: the others are write-protected until
 * a write marks them), so it starts from exactly that state whatever the
 * previous request did (globals, upvalues, metatables, the random generator,
 * which is reseeded from getrandom() entropy). No lua_close, no lua_newstate
 * per request. Details and measurements: the file heads of sandbox_*.c
 * (sandbox_int.h lists them).
 *
 * Limits (see sandbox_limit.c): memory by the arena's allocator, which refuses
 * beyond the tenant's budget (503); time by a watchdog thread that signals a
 * runner over its deadline: first a Lua hook that raises errors, then, if the
 * request still runs (a C function, a finalizer), a siglongjmp out of it,
 * which is safe because the whole state is discarded afterwards (504). And a
 * share of each runner's time: a tenant's CPU time in the sandbox fills a bucket
 * that drains at its share of the clock (a quarter by default); while the
 * bucket is over 100 ms the tenant is answered 503 without running. And the
 * C stack: every call into a tenant's state runs on a stack of the runner's
 * own, with a guard below it; nested C calls that reach the guard are cut by
 * the same jump (503), at load time as at request time.
 *
 * No tenant code runs at load time on a runner's thread: a version is built
 * by whoever publishes it (the reloader, sandbox_put's caller), and that
 * state goes to one runner; the loader thread builds one for each other
 * runner, which keeps serving its previous version meanwhile (a runner that
 * has none gets -EAGAIN, and sandbox_wait says when to run again).
 *
 * Everything here is process-wide: one tenant registry, one watchdog, one
 * loader. */
#ifndef SANDBOX_SANDBOX_H
#define SANDBOX_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/http.h"

#define SANDBOX_NAME_MAX 64 /* tenant names: [A-Za-z0-9_-]{1,64} */

typedef struct sandbox_cfg {
    const char *dir; /* tenants directory (DIR/<name>.lua, DIR/<name>.conf), NULL: none */
    int mem_kb;      /* default memory limit of one request (KiB) */
    int ms;          /* default time limit of one request (ms) */
    int quiet;       /* don't report load errors on stderr (tests) */
    int share_pct;   /* default share of a runner's time, % (0: 25; 100: never held back) */
} sandbox_cfg_t;

/* Per-tenant limits, from the defaults and DIR/<name>.conf (`mem_kb = N`,
 * `ms = N`, `share = N`, one per line, # comments). */
typedef struct sandbox_limits {
    int mem_kb;
    int ms;
    int share_pct; /* 1..100, 0: the default */
} sandbox_limits_t;

/* A request header, as the HTTP parser gives it (the name in any case: the
 * tenant sees it lower-cased). */
typedef http_header_t sandbox_header_t;

/* One request, as the tenant sees it in `req`. Nothing is kept after the
 * call. query may be NULL (req.query is then ""). */
typedef struct sandbox_req {
    const char *method;
    size_t method_len;
    const char *path; /* after /t/<name>: at least "/" */
    size_t path_len;
    const char *query;
    size_t query_len;
    const sandbox_header_t *headers;
    size_t num_headers;
    const char *body;
    size_t body_len;
} sandbox_req_t;

/* How a request ended. */
enum sandbox_outcome {
    SB_OK,         /* the tenant answered */
    SB_LUA_ERROR,  /* an error escaped handle(): 500 */
    SB_MEMORY,     /* over its memory: 503 */
    SB_TIMEOUT,    /* over its time: 504 */
    SB_BAD_RETURN, /* handle() returned something that is not an answer: 500 */
    SB_NOT_LOADED, /* the tenant exists but no version of it ever loaded here: 500 */
    SB_THROTTLED,  /* over its share of the runner's time: 503, not run */
    SB_STACK,      /* its nested C calls reached the end of the sandbox's stack: 503 */
    SB_OUTCOMES
};

/* The answer. body and content_type point into the runner's memory and stay
 * valid until the next sandbox_run on the same runner. */
typedef struct sandbox_resp {
    int status;
    int outcome;              /* enum sandbox_outcome */
    const char *content_type; /* NUL-terminated */
    const char *body;
    size_t body_len;
} sandbox_resp_t;

/* A caller of sandbox_run waiting for a tenant's build (see sandbox_wait).
 * The caller owns it; `next` is the sandbox's. */
typedef struct sandbox_waiter {
    void (*ready)(struct sandbox_waiter *w);
    struct sandbox_waiter *next;
} sandbox_waiter_t;

/* Counters of one tenant, summed over every runner. */
typedef struct sandbox_stats {
    uint64_t requests;
    uint64_t outcomes[SB_OUTCOMES];
    uint64_t limit_memory;   /* requests and loads that hit the memory limit */
    uint64_t limit_time;     /* ... the time limit */
    uint64_t limit_stack;    /* ... the end of the sandbox's C stack */
    double seconds;          /* time spent in the sandbox (restore, reseed, call), requests only */
    uint64_t restored_bytes; /* copied back from snapshots before requests */
    uint64_t reloads;        /* versions published (the first load counts) */
    uint64_t reload_errors;  /* files that failed to compile or run, bad .conf */
    int loaded;              /* a version is being served */
} sandbox_stats_t;

typedef struct sandbox_runner sandbox_runner_t;

/* Set up the process-wide parts: the signal handler, the watchdog and
 * loader threads, the tenant registry, the metrics writer (call before the
 * server starts its threads). Loads cfg->dir once (load errors are
 * reported, not fatal). Returns 0, or -errno with a message in err. */
int sandbox_init(const sandbox_cfg_t *cfg, char *err, size_t errlen);

/* Look at the tenants directory now: load new and changed files, drop
 * removed ones. A version that fails to compile, to run its top-level code
 * within the limits (memory, time, stack), or to define handle() is
 * reported (stderr, metrics) and the previous version keeps serving. Call from one thread at a time (the
 * reloader, or a test), not one that serves requests: the new versions'
 * top-level code runs on it. Returns the number of tenants published or
 * removed, or a negative errno when the directory can't be read. */
int sandbox_scan(void);

/* Start a thread calling sandbox_scan every interval_ms (it builds what it
 * publishes, so a tenant's top-level code runs there, never on a runner's
 * thread). Returns 0 or -errno. */
int sandbox_start_reloader(int interval_ms);

/* Publish a tenant version from memory (tests, embedding), with the same
 * validation as sandbox_scan: its top-level code runs on the calling thread
 * (so not on one that serves requests). lim may be NULL (the defaults).
 * Returns 0, or
 * -EINVAL (bad name) / -ENOEXEC (did not load; why in err, the previous
 * version keeps serving) / -ENOMEM. */
int sandbox_put(const char *name, const char *src, size_t len, const sandbox_limits_t *lim,
                char *err, size_t errlen);

/* Stop serving a tenant (its counters stay). Returns 0 or -ENOENT. */
int sandbox_remove(const char *name);

/* A runner for the calling thread; use it on that thread only. NULL when out
 * of memory. */
sandbox_runner_t *sandbox_runner_new(void);

/* Free a runner and every arena it holds (on its thread). */
void sandbox_runner_free(sandbox_runner_t *r);

/* Run one request of tenant name[0..name_len) in a fresh sandbox: resp gets
 * the status and the answer (2xx..5xx from the tenant, or 500/503/504 with a
 * short reason). A new version of the tenant is picked up here, between two
 * requests, once it is built for this runner: until then the previous one
 * answers. Returns 0, -ENOENT when no such tenant is being served, or
 * -EAGAIN when this runner has no version of it yet and one is being built
 * (nothing ran, nothing counted: see sandbox_wait). */
int sandbox_run(sandbox_runner_t *r, const char *name, size_t name_len, const sandbox_req_t *req,
                sandbox_resp_t *resp);

/* After sandbox_run returned -EAGAIN, on the runner's thread: have
 * w->ready(w) called once, from another thread (or this one), when the build
 * it waits for has ended, well or not; then call sandbox_run again (on the
 * runner's thread). Every wait ends: a build takes at most its top-level
 * time limit and a half, and a superseded or abandoned one ends at once.
 * Returns 0, or -EALREADY when there is nothing to wait for (run again now;
 * w is not kept). */
int sandbox_wait(sandbox_runner_t *r, const char *name, size_t name_len, sandbox_waiter_t *w);

/* Give back the memory of large requests (pages above each snapshot): for an
 * idle moment, e.g. the reactor's tick. */
void sandbox_runner_trim(sandbox_runner_t *r);

/* A restore copies back only the pages a request wrote: the others are
 * read-only, and the sandbox takes the write faults on them in its SIGSEGV
 * handler, which passes every other fault on to the handler it replaced.
 * sandbox_init installs it; a program that installs a SIGSEGV handler of its
 * own afterwards (a test framework does, around every test) calls this after
 * it. Returns 0 or -errno. */
int sandbox_claim_faults(void);

/* Stop the reloader, the loader and the watchdog and forget every tenant,
 * once every runner has been freed (tests, valgrind). */
void sandbox_shutdown(void);

/* Counters of a tenant. Returns 0 or -ENOENT. */
int sandbox_stats(const char *name, sandbox_stats_t *st);

/* Append every tenant's counters as Prometheus text (a metrics writer). */
void sandbox_metrics(buf_t *out, void *ctx);

#endif
