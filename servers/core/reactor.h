/* reactor: the reactor design's runtime (servers/reactor.c is the design),
 * which the sandboxed server and the incrementor reuse with their own
 * requests (session_cfg_t.ext) and hooks.
 *
 * One epoll loop per thread (--threads), each with its own listening socket
 * on the same port (SO_REUSEPORT: the kernel spreads new connections over
 * them), so loops share nothing on the request path. Long BURNs go to a
 * bounded pool of worker threads (--workers) and their answers come back to
 * the loop that owns the connection, so the loops stay responsive. */
#ifndef CORE_REACTOR_H
#define CORE_REACTOR_H

#include "server.h"

/* BURNs at least this long go to a worker (about 0.3 ms of CPU): shorter
 * ones cost less than the hand-off. */
#define REACTOR_OFFLOAD_MIN 1000000

typedef struct reactor_hooks {
    /* Called on each loop thread before it serves (index 0..threads-1), e.g.
     * to give it per-thread state. Returns 0, or a negative errno to stop. */
    int (*thread_init)(int index, void *ctx);
    /* Called on each loop thread about every `tick_ms` (0: never). */
    void (*tick)(int index, void *ctx);
    int tick_ms;
    void *ctx;
} reactor_hooks_t;

/* Listen, announce, and serve with cfg->threads loops and cfg->workers
 * workers until SIGINT/SIGTERM, then drain (SERVER_DRAIN_MS at most).
 * hooks may be NULL. Returns the process exit status: 0 after a clean stop,
 * 1 when it could not start (the reason printed on stderr) or a loop's
 * thread_init failed (the server then stops as on SIGTERM). */
int reactor_run(server_cfg_t *cfg, const reactor_hooks_t *hooks);

/* Run fn(s, arg) on the loop thread that owns session s, from any thread:
 * how a deferred answer (session_defer) gets back to its connection. fn
 * returns SESS_* bits, as session_resume does. Returns 0 or -ENOMEM. */
int reactor_post(session_t *s, int (*fn)(session_t *s, void *arg), void *arg);

/* The loop index (0..threads-1) of the calling loop thread, -1 elsewhere. */
int reactor_thread_index(void);

#endif
