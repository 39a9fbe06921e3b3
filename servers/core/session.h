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
#include <sys/types.h>

#include "buf.h"
#include "http.h"
#include "timer.h"

/* What a session wants next. */
#define SESS_READ  1 /* wake me when the socket is readable */
#define SESS_WRITE 2 /* wake me when the socket is writable */
#define SESS_CLOSE 4 /* finished: call session_close */
/* a BURN waits for a worker: session_work_run off the loop, then
 * session_on_work_done on it */
#define SESS_WORK  8
/* the peer is gone but a worker or an extension still holds the session:
 * stop watching the socket (epoll reports a hang-up whatever the interest)
 * and keep the session until the held work comes back, which then returns
 * SESS_CLOSE */
#define SESS_GONE  16

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
    struct chat *chat; /* the rooms (core/chat.h); NULL: JOIN and SAY answer ERR */
    int external_io;   /* the design moves the bytes itself (io_uring): the session never
                              reads or writes its socket; see session_on_input */
} session_cfg_t;

/* Fill cfg with the defaults (10 s header timeout, 60 s idle, ...). */
void session_cfg_default(session_cfg_t *cfg);

enum session_op { OP_NONE, OP_WAIT, OP_BURN, OP_STREAM, OP_DEFER };

struct session {
    int fd;
    uint8_t proto;       /* enum proto_kind */
    uint8_t op;          /* enum session_op: what the current request waits for */
    uint8_t closing;     /* answer what is queued, then close */
    uint8_t eof;         /* the peer will send nothing more */
    uint8_t head_only;   /* current HTTP request is HEAD: no body in the answer */
    uint8_t keep_alive;  /* current HTTP request keeps the connection */
    uint8_t has_body;    /* current HTTP request's body is being received */
    uint8_t stream_done; /* line protocol: DONE still to be queued after the A's */
    uint8_t http10;      /* current HTTP request is HTTP/1.0 */
    uint8_t work_ready;  /* a BURN was just queued for a worker: report SESS_WORK once */
    uint8_t working;     /* a worker has the BURN: the session must not be freed */
    uint8_t cancelled;   /* the peer is gone: the worker skips the BURN (atomic) */
    buf_t in, out;
    size_t lent;         /* external_io: output taken by the design, not yet reported sent */
    uint64_t arg;        /* WAIT deadline (ms), BURN steps or result, STREAM bytes left */
    int64_t req_start;   /* ms when the incomplete request began, 0 when none */
    int64_t last_active; /* ms of the last byte moved */
    http_chunked_t chunked;
    const session_cfg_t *cfg;
    timer_node_t timer;       /* for event loops: see session_deadline */
    unsigned armed;           /* for event loops: the events registered for it */
    void *owner;              /* free for the driving loop (its state, a list link...) */
    void *ext_state;          /* free for the extension */
    struct chat_member *chat; /* its place in the chat, once it has joined a room */
};

/* Start a session on a connected non-blocking socket. */
void session_init(session_t *s, int fd, const session_cfg_t *cfg);

/* The socket is readable: read, answer what is complete, try to write.
 * Returns SESS_* bits. */
int session_on_readable(session_t *s);

/* The socket is writable: write what is queued, then go on answering. */
int session_on_writable(session_t *s);

/* ---- External I/O (cfg->external_io), for designs whose kernel moves the
 * bytes (io_uring's receives and sends complete with the data already
 * moved): they call these instead of session_on_readable/_on_writable, and
 * the session never calls read or send. Its output is handed out whole and
 * counted as unsent (for backpressure, and so that a close waits for it)
 * until the design reports it sent. ---- */

/* n > 0 bytes at p arrived on the connection (the design received them);
 * n == 0: the peer closed its side; n < 0: the receive failed with -n (the
 * connection is dead). Bytes are taken even when the session does not want
 * SESS_READ (a receive that completed before the design could stop it):
 * they wait in the input. A design stops receiving when SESS_READ is not
 * asked for, so that what it holds stays bounded: the input past one
 * incomplete request's limit (HTTP_MAX_HEAD + max_body + 16 KiB of read
 * room) is refused as session_on_readable refuses it (413, or a close).
 * Bytes after the session stopped taking requests (closing) are dropped.
 * Returns SESS_* bits. */
int session_on_input(session_t *s, const void *p, ssize_t n);

/* Move the queued output into *dst for the design to send (the two
 * buffers' memory is swapped: dst must hold no bytes, and a large one is
 * freed first). The session appends new answers to a fresh buffer and
 * counts the moved bytes as unsent until session_sent. Returns how many
 * bytes were moved (0: nothing to send). */
size_t session_take_output(session_t *s, buf_t *dst);

/* n > 0 bytes at the head of dst (what session_take_output moved there)
 * went out: they are consumed from dst (report each completed send, partial
 * or whole; once dst is empty, a large one is freed); n < 0: the send
 * failed with -n (the connection is dead). The session goes on: a STREAM
 * refills, requests held back by unsent output are answered. Returns SESS_*
 * bits: SESS_CLOSE (a closing connection) only once every taken byte was
 * reported sent, unless the connection is dead. */
int session_sent(session_t *s, buf_t *dst, ssize_t n);

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

/* Lines of the chat wait for s (CHAT_THREADS: its chat_wake_fd is
 * readable): take them, write, and go on. Returns SESS_* bits. */
int session_on_chat(session_t *s);

/* Run the pending BURN (on any thread; touches only the session's BURN state). */
void session_work_run(session_t *s);

/* The peer is gone while a worker holds the session (SESS_GONE): a BURN not
 * started yet is skipped, since nobody will read its answer (a client that
 * queues BURNs and resets would otherwise keep the workers busy for nothing,
 * and the stop waits for them). Call it on the loop's thread; the worker
 * reads it in session_work_run. */
void session_cancel_work(session_t *s);

/* Back on the loop's thread after session_work_run: answer and go on. */
int session_on_work_done(session_t *s);

/* The BURN could not be queued (every worker busy, queue full): answer
 * "ERR server busy" / 503 instead, on the loop's thread. */
int session_on_work_refused(session_t *s);

/* The SESS_* bits the session wants now, without doing anything. */
int session_wants(const session_t *s);

/* Is the session held by a worker (its BURN) or an extension (a deferred
 * answer)? Then only their return may free it. 1 or 0. */
int session_held(const session_t *s);

/* The next time (ms, monotonic) session_on_timer must be called, 0 for none. */
int64_t session_deadline(const session_t *s);

/* Queue a complete HTTP response for the current request (for extensions).
 * content_type may be NULL (text/plain). */
void session_respond(session_t *s, int status, const char *content_type, const void *body,
                     size_t len);

/* An answer prepared once, status line to body, for session_respond_canned:
 * an extension that answers most requests alike (the incrementor's 200)
 * then copies it whole, as the core's GET / does, instead of writing its
 * head each time (put_head and its strlen calls: 380 instructions). */
typedef struct session_canned {
    int status;
    const char *content_type;
    const void *body; /* outlives the canned answer */
    size_t body_len;
    size_t len; /* of bytes */
    char bytes[512];
} session_canned_t;

/* Prepare c: what session_respond(s, status, content_type, body, len)
 * sends on a keep-alive HTTP/1.1 connection, for a request other than
 * HEAD. content_type may be NULL (text/plain). Returns 0, or -E2BIG when
 * that is longer than c->bytes. */
int session_canned_init(session_canned_t *c, int status, const char *content_type, const void *body,
                        size_t len);

/* session_respond with c's status, type and body: c's bytes when the
 * connection stays open as HTTP/1.1 and the request is not HEAD, else the
 * answer that fits (Connection header, no body). */
void session_respond_canned(session_t *s, const session_canned_t *c);

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
