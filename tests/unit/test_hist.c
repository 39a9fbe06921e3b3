/* The latency histogram: bucket layout, percentiles of known distributions
 * within the stated 1% error, merging, clamping and the .hgrm output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../loadgen/hist.h"

static hist_t *new_hist(void)
{
    hist_t *h = calloc(1, sizeof *h);
    assert_non_null(h);
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The exact percentile of sorted values, with the same rank rule. */
static uint64_t exact(const uint64_t *v, size_t n, double p)
{
    size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999999);
    if (rank == 0)
        rank = 1;
    return v[rank - 1];
}

static void assert_within_1pct(uint64_t got, uint64_t want)
{
    double err = want ? ((double)got - (double)want) / (double)want : (double)got;
    if (err < 0)
        err = -err;
    if (err > 0.01)
        fail_msg("got %llu, want %llu (error %.3f%%)", (unsigned long long)got,
                 (unsigned long long)want, err * 100);
}

static void test_buckets(void **state)
{
    (void)state;
    uint64_t prev_high = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        uint64_t lo = hist_bucket_low(i), hi = hist_bucket_high(i);
        assert_true(lo <= hi);
        if (i > 0)
            assert_int_equal(lo, prev_high + 1); /* contiguous, no gaps */
        assert_int_equal(hist_index(lo), i);
        assert_int_equal(hist_index(hi), i);
        /* The width is at most 1/128 of the lowest value (or 1). */
        assert_true(hi - lo + 1 == 1 || (double)(hi - lo + 1) / (double)lo <= 1.0 / 128 + 1e-12);
        prev_high = hi;
    }
    assert_true(hist_index(HIST_MAX_US) < HIST_BUCKETS);
}

static void check_distribution(uint64_t *v, size_t n)
{
    hist_t *h = new_hist();
    for (size_t i = 0; i < n; i++)
        hist_record(h, v[i]);
    qsort(v, n, sizeof *v, cmp_u64);
    static const double ps[] = {0, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++)
        assert_within_1pct(hist_percentile(h, ps[i]), exact(v, n, ps[i]));
    assert_int_equal(h->count, n);
    assert_int_equal(h->min, v[0]);
    assert_int_equal(h->max, v[n - 1]);
    free(h);
}

static void test_uniform(void **state)
{
    (void)state;
    size_t n = 100000;
    uint64_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = 1 + i * 37 % 1000000; /* 1 us .. 1 s */
    check_distribution(v, n);
    free(v);
}

static void test_log_spread(void **state)
{
    (void)state;
    /* Values over the whole range, 1 us to 1 h, log-uniform. */
    size_t n = 200000;
    uint64_t *v = malloc(n * sizeof *v);
    uint64_t s = 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        double e = (double)(s >> 11) / 9007199254740992.0 * 21.99; /* ln(3.6e9) */
        v[i] = (uint64_t)__builtin_exp(e);
        if (v[i] < 1)
            v[i] = 1;
    }
    check_distribution(v, n);
    free(v);
}

static void test_bimodal(void **state)
{
    (void)state;
    /* 98% fast, 2% stalled for a second: p99 must land on the stall. */
    size_t n = 10000;
    uint64_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = i % 50 == 0 ? 1000000 + i : 40 + i % 7;
    check_distribution(v, n);
    hist_t *h = new_hist();
    for (size_t i = 0; i < n; i++)
        hist_record(h, v[i]);
    assert_true(hist_percentile(h, 99) >= 990000);
    assert_true(hist_percentile(h, 50) < 50);
    free(h);
    free(v);
}

static void test_merge(void **state)
{
    (void)state;
    hist_t *a = new_hist(), *b = new_hist(), *all = new_hist();
    for (uint64_t i = 0; i < 50000; i++) {
        uint64_t x = (i * 7919) % 200000, y = 300 + (i * 104729) % 5000000;
        hist_record(a, x);
        hist_record(b, y);
        hist_record(all, x);
        hist_record(all, y);
    }
    hist_merge(a, b);
    assert_int_equal(a->count, all->count);
    assert_int_equal(a->min, all->min);
    assert_int_equal(a->max, all->max);
    assert_memory_equal(a->counts, all->counts, sizeof a->counts);
    for (double p = 0; p <= 100; p += 0.5)
        assert_int_equal(hist_percentile(a, p), hist_percentile(all, p));
    hist_t *empty = new_hist();
    hist_merge(a, empty); /* merging nothing changes nothing */
    assert_int_equal(a->count, all->count);
    hist_merge(empty, all);
    assert_int_equal(empty->min, all->min);
    free(a), free(b), free(all), free(empty);
}

static void test_edges(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    assert_int_equal(hist_percentile(h, 50), 0);
    assert_true(hist_mean(h) == 0);
    hist_record(h, 0);
    hist_record(h, HIST_MAX_US * 10); /* clamped to 1 h */
    assert_int_equal(h->max, HIST_MAX_US);
    assert_int_equal(hist_percentile(h, 100), HIST_MAX_US);
    assert_int_equal(hist_percentile(h, 0), 0);
    hist_reset(h);
    for (int i = 0; i < 10; i++)
        hist_record(h, 100);
    assert_int_equal(hist_percentile(h, 99.99), 100);
    assert_true(hist_mean(h) == 100);
    assert_true(hist_stddev(h) == 0);
    free(h);
}

static void test_hgrm(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    for (uint64_t i = 1; i <= 10000; i++)
        hist_record(h, i);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_int_equal(hist_write_hgrm(h, f), 0);
    fclose(f);
    assert_non_null(strstr(text, "Value     Percentile TotalCount 1/(1-Percentile)"));
    assert_non_null(strstr(text, "      10.000 1.000000000000      10000\n"));
    assert_non_null(strstr(text, "#[Mean    =        5.000"));
    assert_non_null(strstr(text, "#[Max     =       10.000, Total count    =        10000]"));
    /* The median line: 50% of 1..10000 us is 5 ms, reported as the top of
     * its bucket (4992..5023 us), as HdrHistogram does. */
    assert_non_null(strstr(text, "       5.023 0.500000000000       5023"));
    free(text);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),    cmocka_unit_test(test_uniform),
        cmocka_unit_test(test_log_spread), cmocka_unit_test(test_bimodal),
        cmocka_unit_test(test_merge),      cmocka_unit_test(test_edges),
        cmocka_unit_test(test_hgrm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
