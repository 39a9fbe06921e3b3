/* buf: a growable byte buffer with a read offset, for socket input and output.
 *
 * Valid bytes are data[off .. len). Appending grows the buffer; consuming moves
 * off forward, and the buffer compacts itself only when it needs room, so a
 * request that is parsed and consumed costs no memmove in the common case. */
#ifndef CORE_BUF_H
#define CORE_BUF_H

#include <stddef.h>

typedef struct buf {
    char *data;
    size_t off; /* first valid byte */
    size_t len; /* one past the last valid byte */
    size_t cap;
} buf_t;

/* Number of valid bytes. */
static inline size_t buf_used(const buf_t *b)
{
    return b->len - b->off;
}
/* First valid byte (may be NULL when nothing was ever allocated). */
static inline char *buf_head(const buf_t *b)
{
    return b->data + b->off;
}
/* Free space after the valid bytes. */
static inline size_t buf_room(const buf_t *b)
{
    return b->cap - b->len;
}

/* Make room for at least `more` bytes after the valid ones, compacting first
 * and growing (doubling) if needed, never past `max` bytes of capacity.
 * Returns 0, -E2BIG if `max` would be exceeded, or -ENOMEM. */
int buf_reserve(buf_t *b, size_t more, size_t max);

/* Append n bytes (no capacity limit). Returns 0 or -ENOMEM. */
int buf_append(buf_t *b, const void *p, size_t n);

/* Append a formatted string. Returns 0 or -ENOMEM. */
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Drop the first n valid bytes (n <= buf_used). Resets to empty cheaply. */
void buf_consume(buf_t *b, size_t n);

/* Release the memory; the buffer is empty and reusable afterwards. */
void buf_free(buf_t *b);

#endif
