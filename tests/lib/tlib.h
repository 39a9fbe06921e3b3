/* tlib: what the unit and integration tests share (built into libtest.a).
 *
 *   tproc_   start a server binary as a real process and stop it by its PID
 *   tconn_   a blocking client connection to 127.0.0.1 with bounded reads
 *   thttp_   send a request and read exactly one response (Content-Length)
 *   tguard_  a copy of a buffer placed right before a PROT_NONE page
 *   tincr_   clients POSTing increments to the incrementor, what was acked
 *
 * Every wait is bounded by a timeout in milliseconds. Functions return 0 or a
 * count on success and a negative errno on failure, like the core. */
#ifndef TESTS_TLIB_H
#define TESTS_TLIB_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- processes ---- */

/* Path of a binary built by the Makefile: $BIN/<name> (BIN defaults to
 * "bin"). Returns a pointer to one of a few static buffers, valid until
 * several more calls. */
const char *tproc_bin(const char *name);

/* Is tproc_bin(name) an executable file? For skipping a design not built yet. */
int tproc_exists(const char *name);

/* Start argv[0] with argv (NULL-terminated) in its own process group, its
 * stderr going to a log file under $TMPDIR (see tproc_log), and wait up to
 * 5 s for the line "listening on HOST:PORT". Stores PORT in *port (may be
 * NULL). The process is killed if the test process dies (PDEATHSIG) and at
 * exit if still running. Returns the PID, or a negative errno (-ETIMEDOUT, or
 * -ECHILD when it exited first; its log is printed on stderr then). */
pid_t tproc_start(const char *const argv[], int *port);

/* Stop a process from tproc_start: SIGTERM, wait up to timeout_ms, then
 * SIGKILL its whole process group. Returns its exit code (0..255), 128+signal
 * if a signal ended it (137 when it had to be killed), or a negative errno.
 * A non-zero result prints the log's path on stderr. */
int tproc_stop(pid_t pid, int timeout_ms);

/* Path of the stderr log of a process from tproc_start (NULL if unknown). */
const char *tproc_log(pid_t pid);

/* fork() a child the way tproc_start does (its own process group, killed if
 * the test process dies, and at exit or by tproc_stop_all if still
 * running), for a fake server the test itself runs. Returns 0 in the child,
 * the PID in the parent, or a negative errno. tproc_stop and tproc_wait
 * stop it. */
pid_t tproc_fork(void);

/* Wait up to timeout_ms for a process from tproc_start or tproc_fork to end
 * by itself, then SIGKILL its group. Same returns as tproc_stop. */
int tproc_wait(pid_t pid, int timeout_ms);

/* Stop (tproc_stop, timeout_ms each) every process still running: for a
 * teardown after a test that failed halfway. */
void tproc_stop_all(int timeout_ms);

/* Run argv[0] (argv NULL-terminated) to its end, at most timeout_ms: stdout
 * to /dev/null, stderr into errbuf (NUL-terminated, errlen bytes at most;
 * discarded when errbuf is NULL). Same returns as tproc_stop (137: it did
 * not end in time and was killed). */
int tproc_run(const char *const argv[], int timeout_ms, char *errbuf, size_t errlen);

/* The bytes queued in pid's IPv4 TCP socket from local port lport to
 * remote port rport (not yet acknowledged: in flight or unsent), from
 * /proc/PID/net/tcp; -1 without that socket. */
long tproc_send_queue(pid_t pid, int lport, int rport);

/* ---- client connections ---- */

/* Connect to 127.0.0.1:port (blocking, TCP_NODELAY, close-on-exec).
 * Returns the descriptor or a negative errno. */
int tconn_open(int port);

/* tconn_open, or fail the running cmocka test saying why. */
int tconn_must(int port);

/* tconn_open with a small receive window and small segments, so that when
 * the client does not read, the server's answers queue up in the server
 * after about 100 KB instead of 4 MB. */
int tconn_open_narrow(int port);

/* Close fd with a reset (SO_LINGER 0) instead of a FIN: the peer's next
 * write fails and epoll reports an error and a hang-up. */
void tconn_reset(int fd);

/* n copies of `one` followed by `last`, in one malloc'd NUL-terminated
 * buffer (aborts when out of memory: tests only); its length in *len. For
 * pipelining a batch in one send. */
char *tconn_batch(const char *one, int n, const char *last, size_t *len);

/* Send all n bytes. Returns 0 or a negative errno. */
int tconn_send(int fd, const void *p, size_t n);

/* Send a NUL-terminated string. Returns 0 or a negative errno. */
int tconn_sends(int fd, const char *s);

/* Read into buf (cap bytes, always NUL-terminated, so at most cap-1 are read)
 * until buf contains `term` (when term is not NULL) or holds `want` bytes
 * (when term is NULL), reading nothing beyond what the socket delivers.
 * Returns the number of bytes in buf when the condition is met, -ETIMEDOUT
 * when timeout_ms passed first, -EPIPE when the peer closed first, -ENOBUFS
 * when buf filled up first, or another negative errno. buf holds what came
 * in every case. */
ssize_t tconn_recv_until(int fd, char *buf, size_t cap, const char *term, size_t want,
                         int timeout_ms);

/* Read everything until the peer closes. Returns the number of bytes in buf
 * (NUL-terminated; bytes beyond cap-1 are read and dropped), or -ETIMEDOUT. */
ssize_t tconn_recv_eof(int fd, char *buf, size_t cap, int timeout_ms);

/* One read of at most n bytes before deadline (tnow_ms): the count, 0 at EOF
 * (or reset), -ETIMEDOUT, or another negative errno. */
ssize_t tconn_read_some(int fd, char *p, size_t n, long long deadline);

/* Has the peer closed the connection (or reset it) within timeout_ms?
 * Discards any data still arriving. Returns 1 (closed) or 0 (still open). */
int tconn_closed(int fd, int timeout_ms);

/* Bytes that can be read right now without blocking (0 if none). */
size_t tconn_pending(int fd);

/* ---- HTTP ---- */

typedef struct thttp_resp {
    int status;          /* from the status line */
    long content_length; /* -1 when absent */
    char head[16384];    /* status line and headers, through the blank line, NUL-terminated */
    size_t head_len;
    char *body; /* malloc'd, NUL-terminated; thttp_free */
    size_t body_len;
} thttp_resp_t;

/* Read exactly one response from fd: the head (byte by byte, so nothing of a
 * following response is consumed) and Content-Length bytes of body (none when
 * no_body: the answer to HEAD). Returns 0, -ETIMEDOUT, -EPIPE when the peer
 * closed before the end, -EPROTO for a head without a status line or
 * Content-Length, or another negative errno. */
int thttp_read(int fd, thttp_resp_t *r, int no_body, int timeout_ms);

/* Send the raw request `req` and read one response (no body if req starts
 * with "HEAD "). Same returns as thttp_read. */
int thttp_do(int fd, const char *req, thttp_resp_t *r, int timeout_ms);

/* Does the head contain this header line, e.g. "Connection: close"
 * (case-insensitive, whole line)? */
int thttp_has_header(const thttp_resp_t *r, const char *line);

/* Free the body; r can be reused. */
void thttp_free(thttp_resp_t *r);

/* ---- increment load (the incrementor's tests) ---- */

#define TINCR_CLIENTS  8
#define TINCR_KEYS_MAX 64

typedef struct tincr_client {
    int port, nkeys;
    int positive; /* values 1..100 instead of -10000..10000 */
    volatile int *stop;
    unsigned seed;
    int64_t acked[TINCR_KEYS_MAX];    /* answered 200 */
    int64_t inflight[TINCR_KEYS_MAX]; /* sent, no answer: may or may not be applied */
    long ok, refused, lost;
} tincr_client_t;

typedef struct tincr_load {
    pthread_t tid[TINCR_CLIENTS];
    tincr_client_t c[TINCR_CLIENTS];
    volatile int stop;
    int nkeys, started;
} tincr_load_t;

/* Start TINCR_CLIENTS threads, client i on ports[i % nports], each POSTing
 * increments of keys k0..k<nkeys-1> (nkeys 2..TINCR_KEYS_MAX; every fourth
 * request a JSON batch of two keys) over a keep-alive connection until
 * tincr_stop, or until its server is gone. seed makes the run repeatable.
 * Returns 0, or -1 (bad arguments, or a thread that could not start: those
 * started are stopped). */
int tincr_start(tincr_load_t *l, const int *ports, int nports, int nkeys, int positive,
                unsigned seed);

/* Stop and join the clients; add what they saw, per key, to acked (answered
 * 200) and inflight (sent without an answer), either may be NULL. Returns the
 * requests answered 200. */
long tincr_stop(tincr_load_t *l, int64_t *acked, int64_t *inflight);

/* Read the counters k0..k<nkeys-1> of the incrementor's database at path
 * into v (0 when absent). Returns the rows in its table, or -1. */
int tincr_db_read(const char *path, int64_t *v, int nkeys);

/* Run sql on the database at path from a connection of its own, as another
 * program would (5 s busy timeout). Returns 0, or -1 (its message on
 * stderr). */
int tincr_db_exec(const char *path, const char *sql);

/* The first column of the first row sql gives on the database at path,
 * opened read-only, as text in buf (cap bytes, cut to fit; "" for NULL).
 * Returns 0, or -1 (it cannot be opened, the SQL fails or gives no row). */
int tincr_db_text(const char *path, const char *sql, char *buf, size_t cap);

/* ---- guard pages ---- */

/* A copy of p[0..n) whose last byte sits right before a PROT_NONE page, so
 * reading past the end crashes at once. Aborts when out of memory (tests
 * only). Free with tguard_free(copy, n). */
void *tguard_copy(const void *p, size_t n);

/* Release a copy from tguard_copy. */
void tguard_free(void *copy, size_t n);

/* Write text to dir/name atomically (a temporary file renamed over it, as an
 * editor saves), so a reader never sees half a file. Returns 0 or -errno. */
int tfile_write(const char *dir, const char *name, const char *text);

/* ---- time ---- */

/* Monotonic milliseconds. */
long long tnow_ms(void);

/* Sleep ms milliseconds. */
void tsleep_ms(int ms);

#endif
