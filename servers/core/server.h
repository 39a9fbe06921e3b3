/* server: what every reference server does besides its concurrency model:
 * flags, the listening socket, signals, accepting (with --max-conns), the
 * state and chores of an event loop, and the blocking designs' wait. */
#ifndef CORE_SERVER_H
#define CORE_SERVER_H

#include <signal.h>
#include <stddef.h>

#include "session.h"

/* Optional flags a design accepts, besides the common ones. */
#define SERVER_OPT_THREADS  1 /* --threads N */
#define SERVER_OPT_STACK    2 /* --stack-kb N (threads design) */
#define SERVER_OPT_WORKERS  4 /* --workers N (BURN pool) */
#define SERVER_OPT_TENANTS  8 /* --tenants DIR --tenant-mem-kb --tenant-ms */
/* --upstream HOST:PORT... --upstream-keepalive --upstream-idle-ms
 * --upstream-timeout-ms --no-splice (the proxy) */
#define SERVER_OPT_UPSTREAM 16
/* --no-exclusive (workers: the shared listener watched without EPOLLEXCLUSIVE) */
#define SERVER_OPT_EXCL     32
#define SERVER_OPT_CORO     64 /* --own-stacks (the coro design) */

#define SERVER_MAX_UPSTREAMS 16

#define SERVER_DRAIN_MS 10000 /* on SIGTERM, in-flight requests get this long */

/* Descriptors kept out of the default connection cap: listening sockets,
 * epoll and event descriptors, logs, databases, tenant files. */
#define SERVER_FD_RESERVE 64

typedef struct server_cfg {
    const char *design;
    const char *host; /* --host, default 127.0.0.1 */
    int port;         /* --port, default 8090, 0 = any free port */
    int threads;      /* --threads, default: online CPUs */
    int workers;      /* --workers, default: online CPUs */
    int max_conns;    /* --max-conns, 0 = the descriptor limit less SERVER_FD_RESERVE */
    int max_fd;       /* descriptors >= this are refused (select's FD_SETSIZE), 0 = none */
    size_t stack_kb;  /* --stack-kb, default 256 */
    int own_stacks;   /* --own-stacks: a stack per coroutine, not one shared */
    const char *tenants;
    int tenant_mem_kb;                           /* --tenant-mem-kb, default 4096 */
    int tenant_ms;                               /* --tenant-ms, default 100 */
    const char *upstreams[SERVER_MAX_UPSTREAMS]; /* --upstream HOST:PORT, repeatable */
    size_t n_upstreams;
    int upstream_keepalive;  /* idle upstream connections kept per loop and upstream (64) */
    int upstream_idle_ms;    /* a pooled connection idle this long is closed (60000) */
    int upstream_timeout_ms; /* connect, and first byte of the answer (30000) */
    int splice;              /* --splice: long bodies spliced from near upstreams, not copied */
    int no_exclusive;        /* --no-exclusive: every loop wakes for every connection */
    session_cfg_t session;
} server_cfg_t;

/* Set by the SIGINT/SIGTERM handler, read by every thread: an atomic, since
 * a volatile sig_atomic_t is only safe within the thread the signal hit.
 * Read it as `server_stopping`: nonzero once the server should stop. */
extern int server_stop_flag;
#define server_stopping __atomic_load_n(&server_stop_flag, __ATOMIC_ACQUIRE)

/* Parse the command line into cfg, handling --help and --version (exit 0).
 * A bad or unknown flag prints one line on stderr and exits 2. Also installs
 * the signal handlers and raises the descriptor limit. */
void server_init(int argc, char **argv, const char *design, unsigned opts, server_cfg_t *cfg);

/* What server_init does besides the flags, for a program that parses its
 * own (the incrementor): raise the descriptor limit, create the stop
 * descriptor, install the SIGINT/SIGTERM handlers and ignore SIGPIPE. */
void server_process_init(void);

/* Open the listening socket (NET_* flags). Returns it, or -errno after
 * printing why on stderr (the caller exits). */
int server_listen(const server_cfg_t *cfg, int flags);

/* Print "listening on HOST:PORT" on stderr: the sign for scripts that the
 * server accepts connections. */
void server_announce(const server_cfg_t *cfg, int lfd);

/* A descriptor that becomes readable when the server starts stopping, for
 * loops to wait on beside their sockets. */
int server_stop_fd(void);

/* Accept one connection, non-blocking with TCP_NODELAY. Over --max-conns it
 * is answered 503 and closed. Returns the descriptor, -EAGAIN when there is
 * none to accept, -ECONNREFUSED when one was refused, or another -errno. */
int server_accept(int lfd, const server_cfg_t *cfg);

/* A connection accepted elsewhere (io_uring's accept) taken on as
 * server_accept takes one: over --max-conns (or at or past cfg->max_fd) it
 * is answered 503 and closed; otherwise it is counted open and gets
 * TCP_NODELAY. The descriptor should be non-blocking. Also opens the
 * descriptor server_accept keeps in reserve, so that a loop accepting
 * elsewhere can fall back on server_accept once out of descriptors.
 * Returns fd, or -ECONNREFUSED when it was refused. */
int server_admit(int fd, const server_cfg_t *cfg);

/* Block until a connection arrives and accept it (see server_accept), or
 * until the server is stopping: then -ECANCELED. */
int server_accept_blocking(int lfd, const server_cfg_t *cfg);

/* Answer a connection we can't serve (too many) with 503, then close it. */
void server_refuse(int fd, const char *why);

/* An event loop's state, for the event-driven designs (select, poll, epoll,
 * and each loop of the reactor): its listening socket, its sessions by
 * descriptor, their deadlines, and the drain. Zero it, set lfd, and drive it
 * with the server_loop_* calls below. A loop belongs to one thread. */
typedef struct server_loop {
    int lfd;             /* the listening socket, -1 once stopping */
    timers_t timers;     /* the sessions' deadlines */
    session_t **table;   /* sessions by descriptor */
    int cap, end, count; /* table size, one past the highest session, sessions */
    int64_t drain_until; /* after the stop: when the sessions left are closed */
    void *ctx;           /* the design's own state for this loop (free for it) */
} server_loop_t;

/* A design's reaction to what a session wants next: register its events and
 * deadline (timers_set on L->timers), or free it on SESS_CLOSE. The loop
 * helpers below call it for timers and the stop, as the design's loop does
 * for readiness. */
typedef void (*server_apply_fn)(server_loop_t *L, session_t *s, int wants);

/* Accept every pending connection of L->lfd (see server_accept) into a new
 * session in L's table. Returns the next new session, or NULL when there is
 * none left to accept. */
session_t *server_accept_session(server_loop_t *L, const server_cfg_t *cfg);

/* A new session of L on fd, a connection server_admit took on (what
 * server_accept_session does after accepting). Returns it, or NULL when
 * out of memory: fd is then closed and counted as an accept error. */
session_t *server_session_new(server_loop_t *L, const server_cfg_t *cfg, int fd);

/* Close and free a session of L, and drop it from L's table. */
void server_session_free(server_loop_t *L, session_t *s);

/* The session of L on descriptor fd, or NULL: for loops that visit every
 * connection (select, poll). */
session_t *server_session_at(const server_loop_t *L, int fd);

/* Should the loop go on? While listening, and then while sessions are left
 * and the drain time (SERVER_DRAIN_MS after the stop) is not over. */
int server_loop_running(const server_loop_t *L);

/* How long the loop may wait (ms, -1 = forever): until the next deadline,
 * never long while draining, and not past the next trim of freed memory
 * once sessions were freed (see server_loop_timers). */
int server_loop_timeout(const server_loop_t *L);

/* Hand every session whose deadline has passed to session_on_timer. And
 * give freed memory back to the system (malloc_trim) every few seconds,
 * whichever loop of the process comes first: call it on every wake-up. */
void server_loop_timers(server_loop_t *L, server_apply_fn apply);

/* Once the server is stopping: close the listener (L->lfd becomes -1),
 * start the drain and shut every session down (session_shutdown). */
void server_loop_stop(server_loop_t *L, server_apply_fn apply);

/* After the loop: free every session left, except those a worker or an
 * extension still holds (session_held), which are left to the process exit
 * since their post must find them; free the table and the deadlines.
 * Returns how many were left. */
int server_loop_end(server_loop_t *L);

/* What server_wait_one saw. */
enum server_event {
    SERVER_EV_NONE,     /* nothing yet (the stop, a signal): look again */
    SERVER_EV_READABLE, /* call session_on_readable */
    SERVER_EV_WRITABLE, /* call session_on_writable */
    SERVER_EV_ERROR,    /* call session_on_error */
    SERVER_EV_TIMER,    /* its deadline passed: call session_on_timer */
    SERVER_EV_DRAINED,  /* stopping, and the drain time is over: close it */
    SERVER_EV_CHAT,     /* chat lines wait for it (server_wait_one, _coro): session_on_chat */
};

/* The blocking designs' wait: poll() on s's socket alone for what it wants
 * (SESS_READ, SESS_WRITE), until its deadline, beside the stop descriptor
 * until drain_end is set (0: not stopping; then the wait ends by drain_end),
 * and beside the chat's eventfd while s is in a room (chat_wake_fd).
 * Returns a SERVER_EV_*, or -errno when poll fails. */
int server_wait_one(session_t *s, int wants, int64_t drain_end);

/* The coroutine designs' wait (core/coro.h): server_wait_one's contract, but
 * the calling coroutine waits in the scheduler's epoll instead of the thread
 * in poll(), the stop reaches it through the scheduler (SERVER_EV_NONE, as
 * the stop descriptor's wake-up does in server_wait_one), and the chat's
 * lines by coro_wake (CHAT_TASKS: chat_new_tasks(coro_self, coro_wake)). Returns a
 * SERVER_EV_*, or coro_wait's -errno. */
int server_wait_coro(session_t *s, int wants, int64_t drain_end);

/* From a coroutine: accept a connection as server_accept does, waiting in
 * the scheduler while there is none, until the server is stopping: then
 * -ECANCELED. Short of descriptors or memory, it tries again every 10 ms. */
int server_accept_coro(int lfd, const server_cfg_t *cfg);

#endif
