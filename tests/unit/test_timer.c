/* Unit tests of the timer heap: ordering, cancelling, deadlines moved later
 * (re-filed lazily when they surface) and earlier, and many random deadlines
 * against a sorted reference. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/timer.h"

/* The heap property and the nodes' back-pointers. */
static void check_heap(const timers_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        assert_int_equal(t->heap[i]->idx, i + 1);
        assert_true(t->heap[i]->want >= t->heap[i]->when);
        if (i > 0)
            assert_true(t->heap[(i - 1) / 2]->when <= t->heap[i]->when);
    }
}

static void test_order(void **state)
{
    (void)state;
    timers_t t = {0};
    timer_node_t n[5] = {{0}};
    const int64_t when[5] = {50, 30, 90, 10, 70};
    assert_int_equal(timers_timeout(&t, 0), -1);
    assert_null(timers_expired(&t, 1000));
    for (int i = 0; i < 5; i++) {
        assert_int_equal(timers_set(&t, &n[i], when[i]), 0);
        check_heap(&t);
    }
    assert_int_equal(timers_timeout(&t, 4), 6);
    assert_int_equal(timers_timeout(&t, 10), 0);
    assert_int_equal(timers_timeout(&t, 15), 0);
    assert_null(timers_expired(&t, 9));
    const int order[5] = {3, 1, 0, 4, 2};
    for (int i = 0; i < 5; i++) {
        timer_node_t *e = timers_expired(&t, 100);
        assert_ptr_equal(e, &n[order[i]]);
        assert_int_equal(e->idx, 0);
        check_heap(&t);
    }
    assert_null(timers_expired(&t, 100));
    assert_int_equal(timers_timeout(&t, 0), -1);
    timers_free(&t);
}

static void test_timeout_cap(void **state)
{
    (void)state;
    timers_t t = {0};
    timer_node_t n = {0};
    timers_set(&t, &n, (int64_t)1 << 40);
    assert_int_equal(timers_timeout(&t, 0), 3600000); /* never overflows an int */
    timers_free(&t);
}

static void test_cancel(void **state)
{
    (void)state;
    timers_t t = {0};
    timer_node_t n[3] = {{0}};
    timer_node_t never = {0};
    timers_set(&t, &n[0], 10);
    timers_set(&t, &n[1], 20);
    timers_set(&t, &n[2], 30);
    assert_int_equal(timers_set(&t, &n[1], 0), 0);
    assert_int_equal(n[1].idx, 0);
    check_heap(&t);
    assert_int_equal(timers_set(&t, &n[1], 0), 0);  /* twice: nothing */
    assert_int_equal(timers_set(&t, &never, 0), 0); /* never set: nothing */
    assert_int_equal(t.n, 2);
    assert_ptr_equal(timers_expired(&t, 100), &n[0]);
    assert_ptr_equal(timers_expired(&t, 100), &n[2]);
    assert_null(timers_expired(&t, 100));
    /* Cancel the top. */
    timers_set(&t, &n[0], 5);
    timers_set(&t, &n[1], 6);
    timers_set(&t, &n[0], 0);
    assert_int_equal(timers_timeout(&t, 0), 6);
    assert_ptr_equal(timers_expired(&t, 6), &n[1]);
    timers_free(&t);
}

/* A deadline pushed back keeps its place and is re-filed when it surfaces. */
static void test_push_back(void **state)
{
    (void)state;
    timers_t t = {0};
    timer_node_t a = {0}, b = {0};
    timers_set(&t, &a, 10);
    timers_set(&t, &b, 40);
    timers_set(&t, &a, 50); /* later: lazy */
    assert_int_equal(a.want, 50);
    check_heap(&t);
    assert_null(timers_expired(&t, 20)); /* a surfaced and was re-filed */
    assert_int_equal(a.when, 50);
    assert_int_equal(timers_timeout(&t, 20), 20); /* b at 40 is next */
    check_heap(&t);
    assert_ptr_equal(timers_expired(&t, 45), &b);
    assert_null(timers_expired(&t, 49));
    assert_ptr_equal(timers_expired(&t, 50), &a);

    /* Later, then a bit earlier but still later than filed. */
    timers_set(&t, &a, 10);
    timers_set(&t, &a, 50);
    timers_set(&t, &a, 30);
    assert_null(timers_expired(&t, 29));
    assert_ptr_equal(timers_expired(&t, 30), &a);

    /* Later, then earlier than filed: sifted up at once. */
    timers_set(&t, &b, 100);
    timers_set(&t, &a, 60);
    timers_set(&t, &a, 200);
    timers_set(&t, &a, 5);
    check_heap(&t);
    assert_int_equal(timers_timeout(&t, 0), 5);
    assert_ptr_equal(timers_expired(&t, 5), &a);
    assert_ptr_equal(timers_expired(&t, 100), &b);

    /* Pushed back, then cancelled. */
    timers_set(&t, &a, 10);
    timers_set(&t, &a, 20);
    timers_set(&t, &a, 0);
    assert_null(timers_expired(&t, 1000));
    assert_int_equal(t.n, 0);
    timers_free(&t);
}

/* Random operations on many nodes; every node must expire exactly once, at
 * its last deadline, in deadline order. */
#define N 3000

static int64_t ref[N]; /* the reference: last deadline of each node, 0 = none */

static void test_random(void **state)
{
    (void)state;
    static timer_node_t n[N];
    timers_t t = {0};
    srand(12345);
    memset(n, 0, sizeof n);
    memset(ref, 0, sizeof ref);
    int64_t now = 1;
    for (int round = 0; round < 20; round++) {
        for (int k = 0; k < 2 * N; k++) {
            int i = rand() % N;
            int op = rand() % 10;
            int64_t when = op == 0 ? 0 : now + 1 + rand() % 5000;
            assert_int_equal(timers_set(&t, &n[i], when), 0);
            ref[i] = when;
        }
        check_heap(&t);
        /* Advance time a little and take what is due. */
        now += rand() % 1500;
        timer_node_t *e;
        int64_t last = 0;
        while ((e = timers_expired(&t, now)) != NULL) {
            int i = (int)(e - n);
            assert_true(ref[i] != 0 && ref[i] <= now);
            assert_int_equal(e->want, ref[i]);
            /* Within one call's drain the deadlines come in order. */
            assert_true(ref[i] >= last);
            last = ref[i];
            ref[i] = 0;
        }
        check_heap(&t);
        for (int i = 0; i < N; i++)
            assert_true(ref[i] == 0 || ref[i] > now);
        int to = timers_timeout(&t, now);
        int64_t first = 0;
        for (int i = 0; i < N; i++)
            if (ref[i] && (!first || ref[i] < first))
                first = ref[i];
        /* The timeout may be early (a pushed-back node), never late. */
        if (first)
            assert_true(to >= 0 && now + to <= first);
        else
            assert_int_equal(to, -1);
    }
    /* Drain everything, one millisecond at a time, against the reference. */
    int left = 0;
    for (int i = 0; i < N; i++)
        left += ref[i] != 0;
    while (left > 0) {
        now++;
        timer_node_t *e;
        while ((e = timers_expired(&t, now)) != NULL) {
            int i = (int)(e - n);
            assert_int_equal(ref[i], now); /* exactly on time */
            ref[i] = 0;
            left--;
        }
    }
    assert_int_equal(t.n, 0);
    timers_free(&t);
}

/* With room reserved, filing a deadline cannot fail; a reservation that
 * cannot be met fails with -ENOMEM and leaves the heap as it was. */
static void test_reserve(void **state)
{
    (void)state;
    timers_t t = {0};
    timer_node_t nodes[200] = {{0}};
    assert_int_equal(timers_reserve(&t, 200), 0);
    assert_true(t.cap >= 200);
    timer_node_t **heap = t.heap;
    size_t cap = t.cap;
    for (int i = 0; i < 200; i++)
        assert_int_equal(timers_set(&t, &nodes[i], 1000 + i), 0);
    assert_ptr_equal(t.heap, heap);               /* no growth: nothing could fail */
    assert_int_equal(timers_reserve(&t, 100), 0); /* already there */
    assert_int_equal(timers_reserve(&t, SIZE_MAX), -ENOMEM);
    assert_ptr_equal(t.heap, heap);
    assert_int_equal(t.cap, cap);
    assert_int_equal(t.n, 200);
    assert_ptr_equal(timers_expired(&t, 1000), &nodes[0]);
    timers_free(&t);
}

static void test_clock(void **state)
{
    (void)state;
    int64_t a = time_update();
    assert_int_equal(time_now_ms(), a);
    int64_t us = time_now_us();
    assert_true(us / 1000 >= a);
    assert_true(time_update() >= a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),  cmocka_unit_test(test_timeout_cap),
        cmocka_unit_test(test_cancel), cmocka_unit_test(test_push_back),
        cmocka_unit_test(test_random), cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_clock),
    };
    return cmocka_run_group_tests_name("timer", tests, NULL, NULL);
}
