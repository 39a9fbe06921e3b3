/* persec: the measured window second by second (requests, errors and the
 * latency distribution of each second), for the JSON's per_second list.
 * Each thread fills its own; engine_stats_merge adds them up at the end. */
#ifndef LOADGEN_PERSEC_H
#define LOADGEN_PERSEC_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"

/* One second of the measured window. */
typedef struct lg_sec {
    uint64_t requests, errors;
    uint32_t n;      /* non-empty latency buckets */
    uint32_t *pairs; /* n pairs (bucket index, count) */
} lg_sec_t;

typedef struct persec {
    lg_sec_t *v; /* v[i]: second i of the window */
    size_t n;
} persec_t;

/* Make p hold at least n seconds, the new ones zeroed. Returns 0, or
 * -ENOMEM with p unchanged. */
int persec_grow(persec_t *p, size_t n);

/* Add h's latencies to sec (h is left as it was). Returns 0 or -ENOMEM
 * (the latencies are then lost, the counts are not). */
int persec_add_hist(lg_sec_t *sec, const hist_t *h);

/* Add src's seconds to dst's, second by second. Returns 0 or -ENOMEM. */
int persec_merge(persec_t *dst, const persec_t *src);

/* The second's latencies as a histogram: h is reset, then gets the counts
 * (its min and max are the first and last bucket's bounds). */
void persec_to_hist(const lg_sec_t *s, hist_t *h);

/* The p99 of a second (microseconds; 0 when it had no latencies). */
uint64_t persec_p99(const lg_sec_t *s);

/* Free what p holds; p is empty again. */
void persec_free(persec_t *p);

#endif
