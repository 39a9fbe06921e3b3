#include "hist.h"

#include <errno.h>
#include <math.h>
#include <string.h>

void hist_reset(hist_t *h)
{
    memset(h, 0, sizeof *h);
}

uint64_t hist_bucket_low(unsigned i)
{
    if (i < (2u << HIST_SUB_BITS))
        return i;
    unsigned shift = (i >> HIST_SUB_BITS) - 1;
    uint64_t sub = (i & ((1u << HIST_SUB_BITS) - 1)) + (1u << HIST_SUB_BITS);
    return sub << shift;
}

uint64_t hist_bucket_high(unsigned i)
{
    if (i < (2u << HIST_SUB_BITS))
        return i;
    unsigned shift = (i >> HIST_SUB_BITS) - 1;
    return hist_bucket_low(i) + (1ULL << shift) - 1;
}

void hist_merge(hist_t *dst, const hist_t *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
    dst->sumsq += src->sumsq;
}

uint64_t hist_percentile(const hist_t *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p < 0)
        p = 0;
    if (p > 100)
        p = 100;
    /* The rank of the value wanted, 1-based: at least the first value. */
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->count);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double hist_mean(const hist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0;
}

double hist_stddev(const hist_t *h)
{
    if (h->count == 0)
        return 0;
    double m = hist_mean(h);
    double var = h->sumsq / (double)h->count - m * m;
    return var > 0 ? sqrt(var) : 0;
}

int hist_write_hgrm(const hist_t *h, FILE *f)
{
    fprintf(f, "%12s %14s %10s %14s\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    if (h->count > 0) {
        /* As HdrHistogram's percentile iterator: 5 ticks per halving of the
         * distance to 100%, so the tail gets ever finer steps. */
        double pct = 0;
        for (int lines = 0; lines < 10000; lines++) {
            uint64_t v = hist_percentile(h, pct);
            uint64_t cum = 0;
            for (unsigned i = 0; i < HIST_BUCKETS && hist_bucket_low(i) <= v; i++)
                cum += h->counts[i];
            if (cum >= h->count || pct >= 100)
                break;
            fprintf(f, "%12.3f %14.12f %10llu %14.2f\n", (double)v / 1000.0, pct / 100.0,
                    (unsigned long long)cum, 1.0 / (1.0 - pct / 100.0));
            double ticks = 5 * pow(2, floor(log2(100.0 / (100.0 - pct))) + 1);
            pct += 100.0 / ticks;
        }
        fprintf(f, "%12.3f %14.12f %10llu\n", (double)h->max / 1000.0, 1.0,
                (unsigned long long)h->count);
    }
    fprintf(f, "#[Mean    = %12.3f, StdDeviation   = %12.3f]\n", hist_mean(h) / 1000.0,
            hist_stddev(h) / 1000.0);
    fprintf(f, "#[Max     = %12.3f, Total count    = %12llu]\n", (double)h->max / 1000.0,
            (unsigned long long)h->count);
    fprintf(f, "#[Buckets = %12d, SubBuckets     = %12d]\n", HIST_BUCKETS >> HIST_SUB_BITS,
            1 << (HIST_SUB_BITS + 1));
    return ferror(f) ? -EIO : 0;
}
