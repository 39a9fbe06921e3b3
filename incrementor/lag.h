/* lag: a histogram of delays in milliseconds (1 ms buckets up to
 * LAG_MAX_MS, one overflow bucket), with its maximum and percentiles.
 * Written by one thread (the writer); read by others without a lock, so a
 * reader may see a histogram a few counts behind: fine for /stats. */
#ifndef INCR_LAG_H
#define INCR_LAG_H

#include <stdint.h>

#define LAG_MAX_MS 60000

typedef struct lag_hist {
    uint64_t n, max;
    uint64_t bucket[LAG_MAX_MS + 1];
} lag_hist_t;

/* Record `count` delays of `ms` (negative counts as 0). */
void lag_add(lag_hist_t *h, int64_t ms, uint64_t count);

/* The smallest delay d such that at least q (0..1) of the recorded delays
 * are <= d; 0 when empty. */
uint64_t lag_quantile(const lag_hist_t *h, double q);

#endif
