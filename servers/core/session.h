/* session: one client connection speaking either protocol, as a state
 * machine that never blocks and never touches the multiplexer.
 *
 * Every design drives sessions the same way: call the session_on_* function
 * for what happened (readable, writable, deadline reached, BURN done) and
 * act on the SESS_* bits it returns (which events to wait for, whether to
 * close, whether to hand a BURN to a worker), plus session_deadline() for
 * the timer. The designs differ only in how they wait. */
#ifndef CORE_SESSION_H
#define CORE_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "http.h"
#include "timer.h"

/* What a session wants next. */
#define SESS_READ  1 /* wake me when the socket is readable */
#define SESS_WRITE 2 /* wake me when the socket is writable */
#define SESS_CLOSE 4 /* finished: call session_close */
#define SESS_WORK  8 /* a BURN waits for a worker: session_work_run off the loop,
                        then session_on_work_done on it */
#define SESS_GONE  16 /* the peer is gone but a worker or an extension still holds
                         the session: stop watching the socket (epoll reports a
                         hang-up whatever the interest) and keep the session until
                         the held work comes back, which then returns SESS_CLOSE */

typedef struct session session_t;

/* Extension hook for HTTP requests the core does not route (tenants, the
 * incrementor). It answers with session_respond, or defers with
 * session_defer and answers later with session_resume. Returns 1 when it
 * took the request, 0 to let the core answer 404. */
typedef int (*session_ext_fn)(session_t *s, const http_request_t *req, const char *body,
                              size_t body_len, void *ctx);

typedef struct session_cfg {
    int header_timeout_ms; /* a request not complete within this closes the connection; 0 = off */
    int idle_timeout_ms;   /* no traffic for this long closes it; 0 = off */
    uint64_t burn_max;     /* largest BURN accepted */
    uint64_t offload_min;  /* BURNs of at least this many steps return SESS_WORK; 0 = run inline */
    size_t max_body;       /* larger bodies get 413 */
    int write_each;        /* write after every answer, not once per batch (the lab's
                              pipelining experiment: what batching saves) */
    int json_errors;       /* refusals of the core (400, 408, 413, 431...) carry
                              {"error": "..."} instead of text (the incrementor) */
    session_ext_fn ext;    /* NULL: unrouted paths are 404 */
    void *ext_ctx;
} session_cfg_t;

/* Fill cfg with the defaults (10 s header timeout, 60 s idle, ...). */
void session_cfg_default(session_cfg_t *cfg);

enum session_op { OP_NONE, OP_WAIT, OP_BURN, OP_STREAM, OP_DEFER };

struct session {
    int fd;
    uint8_t proto;        /* enum proto_kind */
    uint8_t op;           /* enum session_op: what the current request waits for */
    uint8_t closing;      /* answer what is queued, then close */
    uint8_t eof;          /* the peer will send nothing more */
    uint8_t head_only;    /* current HTTP request is HEAD: no body in the answer */
    uint8_t keep_alive;   /* current HTTP request keeps the connection */
    uint8_t has_body;     /* current HTTP request's body is being received */
    uint8_t stream_done;  /* line protocol: DONE still to be queued after the A's */
    uint8_t http10;       /* current HTTP request is HTTP/1.0 */
    uint8_t work_ready;   /* a BURN was just queued for a worker: report SESS_WORK once */
    uint8_t working;      /* a worker has the BURN: the session must not be freed */
    buf_t in, out;
    uint64_t arg;         /* WAIT deadline (ms), BURN steps or result, STREAM bytes left */
    int64_t req_start;    /* ms when the incomplete request began, 0 when none */
    int64_t last_active;  /* ms of the last byte moved */
    http_chunked_t chunked;
    const session_cfg_t *cfg;
    timer_node_t timer;   /* for event loops: see session_deadline */
    unsigned armed;       /* for event loops: the events registered for it */
    void *owner;          /* free for the driving loop (its state, a list link...) */
    void *ext_state;      /* free for the extension */
};

/* Start a session on a connected non-blocking socket. */
void session_init(session_t *s, int fd, const session_cfg_t *cfg);

/* The socket is readable: read, answer what is complete, try to write.
 * Returns SESS_* bits. */
int session_on_readable(session_t *s);

/* The socket is writable: write what is queued, then go on answering. */
int session_on_writable(session_t *s);

/* A deadline (see session_deadline) has passed: finish a WAIT, or close a
 * connection that timed out. Returns SESS_* bits. */
int session_on_timer(session_t *s);

/* The socket reported an error or hang-up. Returns SESS_CLOSE, unless a BURN
 * is running on a worker or an extension deferred the answer: then SESS_GONE,
 * and the close waits for session_on_work_done or session_resume.
 *
 * The same holds for every function here that returns SESS_* bits: a
 * session whose connection dies while its work is held elsewhere returns
 * SESS_GONE, never SESS_CLOSE, so that it has one owner at a time. */
int session_on_error(session_t *s);

/* Run the pending BURN (on any thread; touches only the session's BURN state). */
void session_work_run(session_t *s);

/* Back on the loop's thread after session_work_run: answer and go on. */
int session_on_work_done(session_t *s);

/* The BURN could not be queued (every worker busy, queue full): answer
 * "ERR server busy" / 503 instead, on the loop's thread. */
int session_on_work_refused(session_t *s);

/* The SESS_* bits the session wants now, without doing anything. */
int session_wants(const session_t *s);

/* The next time (ms, monotonic) session_on_timer must be called, 0 for none. */
int64_t session_deadline(const session_t *s);

/* Queue a complete HTTP response for the current request (for extensions).
 * content_type may be NULL (text/plain). */
void session_respond(session_t *s, int status, const char *content_type, const void *body,
                     size_t len);

/* Called by an extension that will answer later: the session stops reading
 * and answering until session_resume. */
void session_defer(session_t *s);

/* Answer the deferred request (on the loop's thread) and go on: like
 * session_respond, and returns SESS_* bits. */
int session_resume(session_t *s, int status, const char *content_type, const void *body,
                   size_t len);

/* Stop taking new requests: answer what is in flight, then close.
 * Returns SESS_* bits (SESS_CLOSE when nothing is in flight). */
int session_shutdown(session_t *s);

/* Close the socket and free the buffers. */
void session_close(session_t *s);

#endif
