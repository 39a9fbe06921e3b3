/* Unit tests of the link emulator's arithmetic (world/link.c): the values of
 * its flags, serialization and its carried remainder, the queue's tail drop,
 * delay and jitter (order kept unless asked), seeded loss within a binomial
 * tolerance, and the departures' heap against a sorted reference. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../world/link.h"

#define MS 1000000LL

static void test_parse_rate(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        uint64_t bps;
    } cases[] = {
        {"100mbit", 0, 100000000},
        {"1gbit", 0, 1000000000},
        {"1.5kbit", 0, 1500},
        {"64bit", 0, 64},
        {"10MBit", 0, 10000000},
        {"0", 0, 0},
        {"10", -1, 0},
        {"-1mbit", -1, 0},
        {"10mbps", -1, 0},
        {"mbit", -1, 0},
        {"", -1, 0},
        {"inf", -1, 0},
        {"0.1bit", -1, 0},
        {"1 mbit", -1, 0},
        {"20000gbit", -1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint64_t bps = 7;
        int rc = wl_parse_rate(cases[i].in, &bps);
        assert_int_equal(rc < 0 ? -1 : 0, cases[i].rc);
        assert_int_equal(bps, cases[i].rc ? 7 : cases[i].bps);
    }
}

static void test_parse_loss(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        double p;
    } cases[] = {
        {"10%", 0, 0.1}, {"0.5", 0, 0.5}, {"100%", 0, 1}, {"0", 0, 0},     {"0.1%", 0, 0.001},
        {"101%", -1, 0}, {"1.5", -1, 0},  {"-1%", -1, 0}, {"10x", -1, 0},  {"%", -1, 0},
        {"10%%", -1, 0}, {"", -1, 0},     {"nan", -1, 0}, {"1e3%", -1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        double p = 7;
        int rc = wl_parse_loss(cases[i].in, &p);
        assert_int_equal(rc < 0 ? -1 : 0, cases[i].rc);
        assert_true(fabs(p - (cases[i].rc ? 7 : cases[i].p)) < 1e-12);
    }
}

static void test_split_pair(void **state)
{
    (void)state;
    char a[16], b[16];
    assert_int_equal(wl_split_pair("10ms", a, b, sizeof a), 0);
    assert_string_equal(a, "10ms");
    assert_string_equal(b, "10ms");
    assert_int_equal(wl_split_pair("1ms/2ms", a, b, sizeof a), 0);
    assert_string_equal(a, "1ms");
    assert_string_equal(b, "2ms");
    assert_int_equal(wl_split_pair("/2ms", a, b, sizeof a), -EINVAL);
    assert_int_equal(wl_split_pair("1ms/", a, b, sizeof a), -EINVAL);
    assert_int_equal(wl_split_pair("1/2/3", a, b, sizeof a), -EINVAL);
    assert_int_equal(wl_split_pair("", a, b, sizeof a), -EINVAL);
    assert_int_equal(wl_split_pair("0123456789abcdefg", a, b, sizeof a), -EINVAL);
}

static void test_tx_ns(void **state)
{
    (void)state;
    assert_int_equal(wl_tx_ns(1500, 1000000000), 12000);
    assert_int_equal(wl_tx_ns(1500, 10000000), 1200000);
    assert_int_equal(wl_tx_ns(1500, 0), 0);
    assert_int_equal(wl_tx_ns(65535, 1), 524280000000000LL);
}

/* A delay only: each packet leaves exactly delay after it came. */
static void test_delay(void **state)
{
    (void)state;
    wl_dir_t d;
    wl_params_t p = {.delay_ns = 10 * MS};
    int64_t due;
    wl_dir_init(&d, &p, 1);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(wl_admit(&d, i * 1000, 1500, &due), WL_PASS);
        assert_int_equal(due, i * 1000 + 10 * MS);
    }
    assert_int_equal(d.c.in, 100);
    wl_dir_free(&d);
}

/* 8 Mbit/s is a byte a microsecond: 1000-byte packets arriving together
 * leave 1 ms apart, and the fourth finds the queue of 3 full. */
static void test_rate_and_queue(void **state)
{
    (void)state;
    wl_dir_t d;
    wl_params_t p = {.delay_ns = 5 * MS, .rate_bps = 8000000, .queue_pkts = 3};
    int64_t due;
    wl_dir_init(&d, &p, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(wl_admit(&d, 0, 1000, &due), WL_PASS);
        assert_int_equal(due, (i + 1) * MS + 5 * MS);
    }
    assert_int_equal(wl_admit(&d, 0, 1000, &due), WL_QDROP);
    assert_int_equal(wl_backlog(&d, 0), 3);
    /* At 1 ms the first has left the bottleneck: room for one. */
    assert_int_equal(wl_backlog(&d, MS), 2);
    assert_int_equal(wl_admit(&d, MS, 1000, &due), WL_PASS);
    assert_int_equal(due, 4 * MS + 5 * MS);
    assert_int_equal(wl_admit(&d, MS, 1000, &due), WL_QDROP);
    assert_int_equal(d.c.qdrop, 2);
    /* An idle bottleneck starts the next packet at once. */
    assert_int_equal(wl_admit(&d, 100 * MS, 500, &due), WL_PASS);
    assert_int_equal(due, 100 * MS + 500000 + 5 * MS);
    wl_dir_free(&d);

    /* A limit in bytes: 2500 hold two packets of 1000, not a third. */
    p = (wl_params_t){.rate_bps = 8000000, .queue_bytes = 2500};
    wl_dir_init(&d, &p, 1);
    assert_int_equal(wl_admit(&d, 0, 1000, &due), WL_PASS);
    assert_int_equal(wl_admit(&d, 0, 1000, &due), WL_PASS);
    assert_int_equal(wl_admit(&d, 0, 1000, &due), WL_QDROP);
    assert_int_equal(wl_admit(&d, 0, 500, &due), WL_PASS);
    wl_dir_free(&d);
}

/* 1 byte at 3 Gbit/s is 8/3 ns: the remainders carried, a long busy period
 * ends where the exact sum says, not a third of a nanosecond a packet early. */
static void test_rate_remainder(void **state)
{
    (void)state;
    wl_dir_t d;
    wl_params_t p = {.rate_bps = 3000000000ULL};
    int64_t due = 0;
    wl_dir_init(&d, &p, 1);
    for (int i = 0; i < 3000; i++)
        assert_int_equal(wl_admit(&d, 0, 1, &due), WL_PASS);
    assert_int_equal(due, 8000);
    wl_dir_free(&d);
}

/* Uniform jitter stays within +-J; in order unless reordering is allowed. */
static void test_jitter(void **state)
{
    (void)state;
    for (int reorder = 0; reorder < 2; reorder++) {
        wl_dir_t d;
        wl_params_t p = {.delay_ns = 10 * MS, .jitter_ns = 2 * MS, .reorder = reorder};
        int64_t due, last = 0, lo = INT64_MAX, hi = 0;
        int backwards = 0;
        wl_dir_init(&d, &p, 42);
        for (int i = 0; i < 10000; i++) {
            int64_t now = i * 100000LL; /* 10 packets a millisecond */
            assert_int_equal(wl_admit(&d, now, 100, &due), WL_PASS);
            backwards += due < last;
            last = due > last ? due : last;
            if (reorder) { /* raw samples: the order is not forced */
                lo = due - now < lo ? due - now : lo;
                hi = due - now > hi ? due - now : hi;
            }
        }
        if (reorder) {
            assert_true(backwards > 100);
            assert_true(lo >= 8 * MS && lo < 8 * MS + 50000);
            assert_true(hi <= 12 * MS && hi > 12 * MS - 50000);
        } else {
            assert_int_equal(backwards, 0);
        }
        wl_dir_free(&d);
    }
}

static void test_normal(void **state)
{
    (void)state;
    uint64_t s = 7;
    double sum = 0, sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = wl_normal(&s);
        sum += x;
        sq += x * x;
    }
    double mean = sum / n, sd = sqrt(sq / n - mean * mean);
    assert_true(fabs(mean) < 0.01);
    assert_true(fabs(sd - 1) < 0.01);

    /* Normal jitter never takes the delay below zero. */
    wl_dir_t d;
    wl_params_t p = {
        .delay_ns = 1 * MS, .jitter_ns = 2 * MS, .jitter_dist = WL_NORMAL, .reorder = 1};
    int64_t due;
    wl_dir_init(&d, &p, 3);
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(wl_admit(&d, 5 * MS, 100, &due), WL_PASS);
        assert_true(due >= 5 * MS);
    }
    wl_dir_free(&d);
}

/* 10% loss over 100000 packets: within 5 standard deviations (about 475),
 * the same packets for the same seed. */
static void test_loss(void **state)
{
    (void)state;
    wl_params_t p = {.loss = 0.1};
    uint64_t lost[2] = {0};
    int64_t due;
    for (int run = 0; run < 2; run++) {
        wl_dir_t d;
        wl_dir_init(&d, &p, 99);
        for (int i = 0; i < 100000; i++)
            lost[run] += wl_admit(&d, i, 100, &due) == WL_LOST;
        assert_int_equal(lost[run], d.c.lost);
        wl_dir_free(&d);
    }
    assert_int_equal(lost[0], lost[1]);
    double sd = sqrt(100000 * 0.1 * 0.9);
    assert_true(fabs((double)lost[0] - 10000) < 5 * sd);
}

static int cmp_item(const void *x, const void *y)
{
    const wl_item_t *a = x, *b = y;
    if (a->due != b->due)
        return a->due < b->due ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static void test_heap(void **state)
{
    (void)state;
    wl_heap_t h = {0};
    enum { N = 5000 };
    static wl_item_t ref[N];
    srand(5);
    for (uint64_t i = 0; i < N; i++) {
        ref[i] = (wl_item_t){.due = rand() % 500, .seq = i}; /* many ties */
        assert_int_equal(wl_heap_push(&h, ref[i]), 0);
    }
    qsort(ref, N, sizeof *ref, cmp_item);
    wl_item_t it;
    for (int i = 0; i < N; i++) {
        assert_int_equal(wl_heap_top(&h)->due, ref[i].due);
        assert_int_equal(wl_heap_pop(&h, &it), 0);
        assert_int_equal(it.due, ref[i].due);
        assert_int_equal(it.seq, ref[i].seq);
    }
    assert_null(wl_heap_top(&h));
    assert_int_equal(wl_heap_pop(&h, &it), -ENOENT);
    wl_heap_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_rate),     cmocka_unit_test(test_parse_loss),
        cmocka_unit_test(test_split_pair),     cmocka_unit_test(test_tx_ns),
        cmocka_unit_test(test_delay),          cmocka_unit_test(test_rate_and_queue),
        cmocka_unit_test(test_rate_remainder), cmocka_unit_test(test_jitter),
        cmocka_unit_test(test_normal),         cmocka_unit_test(test_loss),
        cmocka_unit_test(test_heap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
