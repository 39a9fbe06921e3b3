/* hist: an HDR-style latency histogram (log-linear buckets), values in
 * microseconds from 0 to 1 hour.
 *
 * Values below 256 have a bucket each; above, every power of two is split in
 * 128 equal buckets, so a bucket is never wider than 1/128 of its lowest
 * value: a percentile read back is within 0.8% of the true one. Recording is
 * a shift, an add and three compares: no allocation, no lock. One histogram
 * per thread, merged at the end. */
#ifndef LOADGEN_HIST_H
#define LOADGEN_HIST_H

#include <stdint.h>
#include <stdio.h>

#define HIST_SUB_BITS 7
#define HIST_MAX_US   3600000000ULL /* 1 h: larger values are recorded as 1 h */
#define HIST_BUCKETS  3328          /* index of HIST_MAX_US, plus one */

typedef struct hist {
    uint64_t count; /* values recorded */
    uint64_t min, max;
    double sum;   /* for the mean (exact, not bucketed) */
    double sumsq; /* for the standard deviation */
    uint64_t counts[HIST_BUCKETS];
} hist_t;

/* Empty the histogram (it is valid zeroed, too). */
void hist_reset(hist_t *h);

/* Bucket of value v (already clamped to HIST_MAX_US). */
static inline unsigned hist_index(uint64_t v)
{
    unsigned shift =
        v < (1u << (HIST_SUB_BITS + 1)) ? 0 : (unsigned)(63 - __builtin_clzll(v)) - HIST_SUB_BITS;
    return (shift << HIST_SUB_BITS) + (unsigned)(v >> shift);
}

/* Record one value (microseconds; above HIST_MAX_US counts as HIST_MAX_US). */
static inline void hist_record(hist_t *h, uint64_t v)
{
    if (v > HIST_MAX_US)
        v = HIST_MAX_US;
    h->counts[hist_index(v)]++;
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += (double)v;
    h->sumsq += (double)v * (double)v;
}

/* Lowest and highest value that fall in bucket i. */
uint64_t hist_bucket_low(unsigned i);
uint64_t hist_bucket_high(unsigned i);

/* Add every value of src to dst. */
void hist_merge(hist_t *dst, const hist_t *src);

/* The value at percentile p (0..100): the highest value of the bucket that
 * holds the p-th percentile, clamped to [min, max] (as HdrHistogram reports).
 * 0 for an empty histogram. */
uint64_t hist_percentile(const hist_t *h, double p);

/* Mean and standard deviation of what was recorded (0 when empty). */
double hist_mean(const hist_t *h);
double hist_stddev(const hist_t *h);

/* Write the percentile distribution in HdrHistogram's .hgrm text format
 * (values in milliseconds, 5 ticks per half distance, as wrk2 prints it).
 * Returns 0 or -EIO. */
int hist_write_hgrm(const hist_t *h, FILE *f);

#endif
