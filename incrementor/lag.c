#include "lag.h"

void lag_add(lag_hist_t *h, int64_t ms, uint64_t count)
{
    if (!count)
        return;
    uint64_t d = ms < 0 ? 0 : (uint64_t)ms;
    __atomic_add_fetch(&h->bucket[d < LAG_MAX_MS ? d : LAG_MAX_MS], count, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->n, count, __ATOMIC_RELAXED);
    if (d > __atomic_load_n(&h->max, __ATOMIC_RELAXED))
        __atomic_store_n(&h->max, d, __ATOMIC_RELAXED);
}

uint64_t lag_quantile(const lag_hist_t *h, double q)
{
    uint64_t n = __atomic_load_n(&h->n, __ATOMIC_RELAXED), seen = 0;
    if (!n)
        return 0;
    uint64_t want = (uint64_t)(q * (double)n);
    if (want < 1)
        want = 1;
    for (uint64_t d = 0; d <= LAG_MAX_MS; d++) {
        seen += __atomic_load_n(&h->bucket[d], __ATOMIC_RELAXED);
        if (seen >= want)
            return d < LAG_MAX_MS ? d : __atomic_load_n(&h->max, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&h->max, __ATOMIC_RELAXED);
}
