/* parse: the bodies of POST /increment, checked before anything is applied.
 *
 * Two encodings: a form `key=<k>&value=<v>` (one increment) and a JSON
 * object `{"<k>": <v>, ...}` (a batch). The functions that judge a request
 * (req_parse_form, req_parse_json, req_idem_key) return 0, or the HTTP
 * status to answer (400) with a one-line reason in the caller's `err`
 * buffer: a verdict, not a failure (see the README's "Conventions"). The
 * helpers under them (req_key_check, req_parse_i64) return 0 or -errno.
 * Nothing here allocates except the JSON parser. */
#ifndef INCR_PARSE_H
#define INCR_PARSE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/http.h"

#define REQ_KEY_MAX  256 /* bytes of a key after decoding */
#define REQ_IDEM_MAX 255 /* bytes of an Idempotency-Key */

enum req_kind { REQ_FORM = 1, REQ_JSON = 2 };

/* One increment. `key` points into the caller's buffer or the JSON tree. */
typedef struct req_item {
    const char *key;
    size_t key_len;
    int64_t value;
} req_item_t;

/* Which body encoding a Content-Type names (media type case-insensitive,
 * parameters such as charset ignored): REQ_FORM, REQ_JSON, or 0 for any
 * other (then the answer is 415). ct may be NULL (absent header). */
int req_content_kind(const char *ct, size_t len);

/* Is key[0..len) a valid counter name: 1..REQ_KEY_MAX bytes of valid UTF-8
 * (shortest forms, no surrogates) with no control character (C0, DEL, C1)?
 * Returns 0, or -EINVAL and points *why at the reason. */
int req_key_check(const char *key, size_t len, const char **why);

/* Parse a signed 64-bit decimal integer ([+-]digits, nothing else).
 * Returns 0, -EINVAL when it is not an integer, -ERANGE outside int64. */
int req_parse_i64(const char *s, size_t len, int64_t *v);

/* Parse a form body: exactly one `key` and one `value` parameter,
 * percent-encoded ('+' is a space). The decoded key is written to
 * keybuf[0..REQ_KEY_MAX) and item->key points there. Returns 0 or 400. */
int req_parse_form(const char *body, size_t len, char *keybuf, req_item_t *item, char *err,
                   size_t errlen);

/* Parse a JSON batch: a non-empty object of integer values with distinct,
 * valid keys. On success *root owns the tree (json_decref it after use) and
 * *items (free it) points n items whose keys live in the tree. Returns 0 or
 * 400 (then nothing is left to free). */
int req_parse_json(const char *body, size_t len, json_t **root, req_item_t **items, size_t *n,
                   char *err, size_t errlen);

/* The request's Idempotency-Key header: 1..REQ_IDEM_MAX visible ASCII
 * characters (%x21-7E; the value is opaque, quotes included), at most one
 * such header. Returns 0 with *key and *len set (*len = 0: no header), or
 * 400 with the reason in err. */
int req_idem_key(const http_header_t *h, size_t nh, const char **key, size_t *len, char *err,
                 size_t errlen);

/* A fingerprint of a request's increments, to tell a retry from another
 * request under the same Idempotency-Key: equal for the same set of (key,
 * value) items whatever their order or encoding (form or JSON), different
 * otherwise except for 64-bit hash collisions. The keys of a request are
 * distinct (the parsers make sure), so no two items cancel out. */
uint64_t req_fingerprint(const req_item_t *it, size_t n);

#endif
