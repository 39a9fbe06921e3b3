/* http: an HTTP/1.x request and response parser with no state and no copies.
 *
 * The parsers point into the caller's buffer; the caller owns all memory.
 * They return the length of the header block (request/status line and headers,
 * including the blank line) when it is complete, HTTP_PARTIAL when more bytes
 * are needed, HTTP_BAD for a malformed message and HTTP_TOO_LARGE when the
 * header block is longer than `max_head` bytes or has too many headers. The
 * same parser serves blocking servers, event loops and the load generator. */
#ifndef CORE_HTTP_H
#define CORE_HTTP_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

/* Negative errnos, as every failure in this code base (see the README's
 * "Conventions"), so that no parse result reads as another function's
 * error: http_query_get's -ENOENT is not "partial". */
#define HTTP_BAD       (-EBADMSG)  /* malformed */
#define HTTP_PARTIAL   (-EAGAIN)   /* not complete yet: more bytes needed */
#define HTTP_TOO_LARGE (-EMSGSIZE) /* over a limit (head, headers, body) */

#define HTTP_MAX_HEADERS 64        /* more is answered with 431 */
#define HTTP_MAX_HEAD    8192      /* default header block limit (431 beyond) */
#define HTTP_MAX_BODY    (1 << 20) /* default body limit (413 beyond) */

typedef struct http_header {
    const char *name;
    size_t name_len;
    const char *value; /* without surrounding white space */
    size_t value_len;
} http_header_t;

typedef struct http_request {
    const char *method;
    size_t method_len;
    const char *path; /* the target up to '?', absolute-form reduced to its path */
    size_t path_len;
    const char *query; /* after '?', NULL when there is none */
    size_t query_len;
    const char *authority; /* absolute-form's host[:port] (maybe empty), else NULL */
    size_t authority_len;
    int major, minor; /* HTTP/major.minor */
    size_t num_headers;
    http_header_t headers[HTTP_MAX_HEADERS];
} http_request_t;

typedef struct http_response {
    int major, minor;
    int status;
    size_t num_headers;
    http_header_t headers[HTTP_MAX_HEADERS];
} http_response_t;

/* Parse a request head from buf[0..len). See the file comment for returns. */
int http_parse_request(const char *buf, size_t len, size_t max_head, http_request_t *req);

/* Parse a response head from buf[0..len). Same returns as http_parse_request. */
int http_parse_response(const char *buf, size_t len, size_t max_head, http_response_t *res);

/* Is the field name `name` (len bytes) `canon`, case-blind (RFC 9110
 * 5.1)? canon is spelled as the RFCs do, which nearly every sender copies:
 * a memcmp decides then, and the case-blind compare (four times its cost)
 * runs only on a miss. */
static inline int http_name_is(const char *name, size_t len, const char *canon)
{
    size_t n = strlen(canon);
    return len == n && (memcmp(name, canon, n) == 0 || strncasecmp(name, canon, n) == 0);
}

/* The first header named `name` (case-insensitive, http_name_is: pass the
 * RFC spelling, "Content-Type"), or NULL. */
const http_header_t *http_find_header(const http_header_t *h, size_t n, const char *name);

/* Does the comma-separated header value contain `token` (case-insensitive)? */
int http_has_token(const char *value, size_t len, const char *token);

/* How the body of a message with these headers is framed: *content_length is
 * its length (-1 when absent), *chunked is set for Transfer-Encoding: chunked.
 * Returns 0, or the status to answer: 400 for an invalid or repeated
 * Content-Length or Content-Length together with Transfer-Encoding, 501 for a
 * transfer coding other than chunked. */
int http_body_framing(const http_header_t *h, size_t n, int64_t *content_length, int *chunked);

/* The Host rule of RFC 9112 section 3.2, for a server: 400 when an HTTP/1.1
 * (or later 1.x) request has no Host field, when any request has more than
 * one, or when its value is not `uri-host [ ":" port ]` (RFC 3986; empty is
 * allowed); and when an absolute-form target's authority is empty or not
 * such a value (userinfo: RFC 9110 4.2.1, 4.2.4). Returns 0 or 400. Kept out of http_parse_request, which frames
 * messages of every version alike: HTTP/1.0 needs no Host. */
int http_check_host(const http_request_t *req);

/* A server's checks of a request head before it looks at what it asks
 * (the same for every design, and for the proxy before it forwards):
 * `parsed` is http_parse_request's return for req (not HTTP_PARTIAL). Returns
 * 0 when the request may be served, with *content_length and *chunked set as
 * http_body_framing sets them; else the status to answer and close with (431
 * head too large, 400 malformed or bad framing or Host, 501 coding, 505
 * version), *why its reason (a static line of text). */
int http_check_request(int parsed, const http_request_t *req, int64_t *content_length, int *chunked,
                       const char **why);

/* Does the client want the connection kept open after this request?
 * HTTP/1.1 by default unless "Connection: close"; HTTP/1.0 only with
 * "Connection: keep-alive". */
int http_keep_alive(const http_request_t *req);

/* Incremental, in-place decoder of a chunked body. Zero-initialise it before
 * the first call. */
typedef struct http_chunked {
    size_t src;     /* raw bytes consumed so far, from the body's start */
    size_t dst;     /* decoded bytes so far, stored at the body's start */
    uint64_t left;  /* bytes left in the current chunk */
    size_t trailer; /* bytes of the trailer section so far (at most HTTP_MAX_HEAD) */
    int state;
    int digits; /* significant digits of the current size (leading zeros don't count) */
} http_chunked_t;

/* Decode what has arrived of a chunked body at buf[0..len) (buf is the byte
 * after the header block; len counts every byte received since). Decoded bytes
 * are moved to buf[0..d->dst). Returns 1 when the body and its trailers are
 * complete (d->src is then the raw length to consume), 0 when more is needed,
 * HTTP_BAD for an encoding off the RFC 9112 grammar (junk after a size, a bare
 * CR, a malformed extension or trailer field), HTTP_TOO_LARGE when the
 * decoded body would exceed max_body, a size has more than 15 significant hex
 * digits or the trailers more than HTTP_MAX_HEAD bytes. Extensions and
 * trailer fields are checked, then ignored. */
int http_decode_chunked(http_chunked_t *d, char *buf, size_t len, size_t max_body);

/* Follow the framing of a chunked body passed on unchanged (a proxy): scan
 * the n bytes at p, which come after those of the earlier calls with d.
 * Returns 1 when the body and its trailers end within them (*used is then
 * how many of the n are the body's), 0 when all n are and more are needed
 * (*used = n), or HTTP_BAD / HTTP_TOO_LARGE as http_decode_chunked, with no
 * limit on the body's length. d->src counts within the last call only. */
int http_scan_chunked(http_chunked_t *d, const char *p, size_t n, size_t *used);

/* Find parameter `name` in a query string (a=1&b=2). On success points
 * *value at its raw (still percent-encoded) value and returns 0; returns
 * -ENOENT when absent. */
int http_query_get(const char *query, size_t len, const char *name, const char **value,
                   size_t *value_len);

/* Percent-decode src into dst (which may be src itself), '+' meaning space
 * when `plus` is set. Returns the decoded length or -EINVAL for a bad escape. */
ssize_t http_url_decode(const char *src, size_t len, char *dst, int plus);

/* Reason phrase of a status code ("OK", "Not Found", ...). */
const char *http_reason(int status);

#endif
