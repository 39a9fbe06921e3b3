/* workload: the requests a run sends, built once before it starts.
 *
 * Each request variant (an HTTP path, a line-protocol command of the mix) is
 * precomputed as the exact bytes to write and the answer to expect, so the
 * hot path only copies bytes. Increment requests differ in key and value and
 * are formatted into the output buffer directly, still without allocating. */
#ifndef LOADGEN_WORKLOAD_H
#define LOADGEN_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"
#include "opts.h"

typedef struct lg_variant {
    char *bytes; /* the request, ready to write */
    size_t len;
    unsigned weight; /* line mix weight */
    check_expect_t expect;
    char store[32]; /* an expected body computed for this variant */
} lg_variant_t;

typedef struct lg_workload {
    lg_variant_t *v;
    size_t n;
    unsigned total_weight;
    int random_pick; /* line mix: weighted random; HTTP paths: rotation */
    size_t max_len;  /* longest request, in bytes */

    unsigned incr_keys; /* increment mode when > 0 */
    int incr_max;
    int incr_positive; /* values 1..incr_max */
    char *incr_head;   /* "POST /increment ... Content-Length: " */
    size_t incr_head_len;
    check_expect_t incr_expect;
} lg_workload_t;

/* Build the variants from the options. Returns 0, or -EINVAL/-ENOMEM with
 * err filled. */
int workload_build(lg_workload_t *w, const lg_opts_t *o, char *err, size_t errlen);

/* Free what workload_build allocated. */
void workload_free(lg_workload_t *w);

/* The variant to send next: `counter` is the connection's request count (for
 * rotation), `rnd` a fresh random number (for the weighted mix). */
static inline unsigned workload_pick(const lg_workload_t *w, uint64_t counter, uint64_t rnd)
{
    if (w->n == 1)
        return 0;
    if (!w->random_pick)
        return (unsigned)(counter % w->n);
    unsigned r = (unsigned)(rnd % w->total_weight);
    unsigned i = 0;
    while (r >= w->v[i].weight)
        r -= w->v[i++].weight;
    return i;
}

/* Format the increment request for key index `key` and `value` into out
 * (at least w->max_len bytes). Returns its length. */
size_t workload_increment(const lg_workload_t *w, char *out, unsigned key, int value);

#endif
