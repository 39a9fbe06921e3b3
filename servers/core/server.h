/* server: what every reference server does besides its concurrency model:
 * flags, the listening socket, signals, accepting (with --max-conns), and
 * serving one connection with blocking waits (iterative and threads). */
#ifndef CORE_SERVER_H
#define CORE_SERVER_H

#include <signal.h>
#include <stddef.h>

#include "session.h"

/* Optional flags a design accepts, besides the common ones. */
#define SERVER_OPT_THREADS 1 /* --threads N */
#define SERVER_OPT_STACK   2 /* --stack-kb N (threads design) */
#define SERVER_OPT_WORKERS 4 /* --workers N (BURN pool) */
#define SERVER_OPT_TENANTS 8 /* --tenants DIR --tenant-mem-kb --tenant-ms */

#define SERVER_DRAIN_MS 10000 /* on SIGTERM, in-flight requests get this long */

/* Descriptors kept out of the default connection cap: listening sockets,
 * epoll and event descriptors, logs, databases, tenant files. */
#define SERVER_FD_RESERVE 64

typedef struct server_cfg {
    const char *design;
    const char *host;   /* --host, default 127.0.0.1 */
    int port;           /* --port, default 8090, 0 = any free port */
    int threads;        /* --threads, default: online CPUs */
    int workers;        /* --workers, default: online CPUs */
    int max_conns;      /* --max-conns, 0 = the descriptor limit less SERVER_FD_RESERVE */
    int max_fd;         /* descriptors >= this are refused (select's FD_SETSIZE), 0 = none */
    size_t stack_kb;    /* --stack-kb, default 256 */
    const char *tenants;
    int tenant_mem_kb;  /* --tenant-mem-kb, default 4096 */
    int tenant_ms;      /* --tenant-ms, default 100 */
    session_cfg_t session;
} server_cfg_t;

/* Set while the server should stop (SIGINT/SIGTERM). */
extern volatile sig_atomic_t server_stopping;

/* Parse the command line into cfg, handling --help and --version (exit 0).
 * A bad or unknown flag prints one line on stderr and exits 2. Also installs
 * the signal handlers and raises the descriptor limit. */
void server_init(int argc, char **argv, const char *design, unsigned opts, server_cfg_t *cfg);

/* What server_init does besides the flags, for a program that parses its
 * own (the incrementor): raise the descriptor limit, create the stop
 * descriptor, install the SIGINT/SIGTERM handlers and ignore SIGPIPE. */
void server_process_init(void);

/* Open the listening socket (NET_* flags), or print why not and exit 1. */
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

/* Block until a connection arrives and accept it (see server_accept), or
 * until the server is stopping: then -ECANCELED. */
int server_accept_blocking(int lfd, const server_cfg_t *cfg);

/* Answer a connection we can't serve (too many) with 503, then close it. */
void server_refuse(int fd, const char *why);

/* Accept every pending connection (see server_accept) into a new session
 * registered in the session table. Returns the next new session, or NULL
 * when there is none left to accept. */
session_t *server_accept_session(int lfd, const server_cfg_t *cfg);

/* Close and free a session, and drop it from the session table. */
void server_session_free(session_t *s);

/* The session table: sessions by descriptor, for single-threaded loops that
 * need to visit every connection (select, poll, shutdown). */
session_t *server_session_at(int fd);
/* One past the highest descriptor that may hold a session. */
int server_session_end(void);
/* Number of sessions in the table. */
int server_session_count(void);

/* For the single-threaded loops (select, poll, epoll), which keep their
 * sessions in the session table and act on a session's wants with their
 * own `apply` (register events and deadline, or free on SESS_CLOSE). */
typedef void (*server_apply_fn)(session_t *s, int wants);

/* Should the loop go on? While listening, and then while sessions are left
 * and the drain time (SERVER_DRAIN_MS after the stop) is not over. */
int server_loop_running(int lfd);

/* How long the loop may wait (ms, -1 = forever): until the next deadline,
 * and never long while draining. */
int server_loop_timeout(const timers_t *t, int lfd);

/* Hand every session whose deadline has passed to session_on_timer. */
void server_loop_timers(timers_t *t, server_apply_fn apply);

/* Once the server is stopping: close the listener (*lfd becomes -1), start
 * the drain and shut every session down (session_shutdown). */
void server_loop_stop(int *lfd, server_apply_fn apply);

/* Free every session left in the table (after the loop). */
void server_loop_end(void);

/* Serve one connection to its end, waiting in poll() on it alone: the
 * blocking model of the iterative and threads designs. BURN runs inline.
 * Returns when the connection is closed; takes ownership of fd. */
void server_serve_blocking(int fd, const server_cfg_t *cfg);

#endif
