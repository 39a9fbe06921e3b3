/* check: response checkers for both protocols.
 *
 * A checker reads the response to the oldest request in flight from the
 * connection's input and says whether it is right: PONG for PING, DONE for
 * WAIT, RESULT equal to the BURN value for that n, exactly n bytes of 'A' then
 * DONE for STREAM, and for HTTP the status class (and the body, when the
 * request's expected body is known). Bodies are checked as they stream in, so
 * a response never needs to fit in memory (chunked HTTP bodies excepted).
 * No allocation; the caller owns all memory. */
#ifndef LOADGEN_CHECK_H
#define LOADGEN_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "core/http.h"

enum check_kind { CHECK_PONG, CHECK_DONE, CHECK_RESULT, CHECK_STREAM, CHECK_HTTP };

enum check_outcome {
    CHECK_OK,       /* a right answer */
    CHECK_MISMATCH, /* a well-framed but wrong answer (ERR, a wrong RESULT, a wrong body) */
    CHECK_4XX,      /* HTTP status 4xx */
    CHECK_5XX,      /* HTTP status 5xx */
};

#define CHECK_BAD (-1) /* the stream cannot be framed any more: close the connection */

/* What the answer to one kind of request must be; built once per request
 * variant before the run. */
typedef struct check_expect {
    int kind;         /* enum check_kind */
    uint64_t n;       /* CHECK_RESULT: the value; CHECK_STREAM: the byte count */
    int head;         /* HTTP: a HEAD request, whose response has no body */
    const char *body; /* HTTP: the exact body a 2xx must carry, NULL = any */
    size_t body_len;
} check_expect_t;

/* Progress through one response; zero it (check_reset) before each one. */
typedef struct check_state {
    int phase;
    int status;    /* HTTP status */
    int outcome;   /* enum check_outcome, decided so far */
    int close;     /* HTTP: the server closes the connection after this response */
    uint64_t left; /* body or STREAM bytes still to come */
    uint64_t seen; /* body bytes compared so far */
    http_chunked_t chunked;
} check_state_t;

static inline void check_reset(check_state_t *st)
{
    st->phase = 0;
    st->outcome = 0;
    st->close = 0;
    st->seen = 0;
}

/* Check the response to a request expecting `e` against buf[0..len). Returns
 * the bytes consumed (possibly 0: more input needed) and sets *done when the
 * response is complete, its verdict in st->outcome; or CHECK_BAD. Bytes not
 * consumed must be passed again, with more after them. A chunked HTTP body
 * is decoded in place (buf is written). */
int check_response(check_state_t *st, const check_expect_t *e, char *buf, size_t len, int *done);

/* The peer closed the connection: does that complete the response in
 * progress (an HTTP body delimited by the close)? Returns 1 with st->outcome
 * set, or 0 when the response was cut short. */
int check_eof(check_state_t *st);

/* Expected-answer helpers for the line protocol, from a command line such as
 * "BURN 1000": fills e (RESULT values computed here, once). Returns 0 or
 * -EINVAL for a command the protocol does not accept. */
int check_expect_line(check_expect_t *e, const char *cmd);

/* Expected answer to an HTTP request for `path` on the project's servers:
 * /ping, /wait and /burn?n=N get their exact bodies checked, any other path
 * only its status class. `store` (at least 32 bytes) holds a
 * computed body. */
void check_expect_http(check_expect_t *e, const char *method, const char *path, char *store);

#endif
