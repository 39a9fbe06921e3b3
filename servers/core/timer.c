#include "timer.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static __thread int64_t cached_ms;

int64_t time_update(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    cached_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return cached_ms;
}

int64_t time_now_ms(void)
{
    return cached_ms ? cached_ms : time_update();
}

int64_t time_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void place(timers_t *t, size_t i, timer_node_t *node)
{
    t->heap[i] = node;
    node->idx = i + 1;
}

static void sift_up(timers_t *t, size_t i)
{
    timer_node_t *node = t->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (t->heap[parent]->when <= node->when)
            break;
        place(t, i, t->heap[parent]);
        i = parent;
    }
    place(t, i, node);
}

static void sift_down(timers_t *t, size_t i)
{
    timer_node_t *node = t->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->n)
            break;
        if (c + 1 < t->n && t->heap[c + 1]->when < t->heap[c]->when)
            c++;
        if (node->when <= t->heap[c]->when)
            break;
        place(t, i, t->heap[c]);
        i = c;
    }
    place(t, i, node);
}

static void remove_at(timers_t *t, size_t i)
{
    timer_node_t *gone = t->heap[i];
    gone->idx = 0;
    t->n--;
    if (i == t->n)
        return;
    place(t, i, t->heap[t->n]);
    if (i > 0 && t->heap[i]->when < t->heap[(i - 1) / 2]->when)
        sift_up(t, i);
    else
        sift_down(t, i);
}

int timers_reserve(timers_t *t, size_t n)
{
    if (n <= t->cap)
        return 0;
    /* Doubling: an accept at a time reserves a place at a time. */
    size_t cap = t->cap ? t->cap * 2 : 64;
    if (cap < n)
        cap = n;
    timer_node_t **h = cap > SIZE_MAX / sizeof *h ? NULL : realloc(t->heap, cap * sizeof *h);
    if (!h)
        return -ENOMEM;
    t->heap = h;
    t->cap = cap;
    return 0;
}

int timers_set(timers_t *t, timer_node_t *node, int64_t when)
{
    node->want = when;
    if (when == 0) {
        if (node->idx)
            remove_at(t, node->idx - 1);
        return 0;
    }
    if (node->idx) {
        if (when >= node->when)
            return 0; /* later: settle it lazily when it surfaces */
        node->when = when;
        sift_up(t, node->idx - 1);
        return 0;
    }
    if (t->n == t->cap && timers_reserve(t, t->n + 1) < 0) {
        node->want = 0;
        return -ENOMEM;
    }
    node->when = when;
    place(t, t->n++, node);
    sift_up(t, t->n - 1);
    return 0;
}

timer_node_t *timers_expired(timers_t *t, int64_t now)
{
    while (t->n > 0 && t->heap[0]->when <= now) {
        timer_node_t *top = t->heap[0];
        if (top->want > top->when) { /* pushed back since filed: re-file */
            top->when = top->want;
            sift_down(t, 0);
            continue;
        }
        remove_at(t, 0);
        return top;
    }
    return NULL;
}

int timers_timeout(const timers_t *t, int64_t now)
{
    if (t->n == 0)
        return -1;
    int64_t d = t->heap[0]->when - now;
    if (d <= 0)
        return 0;
    return d > 3600000 ? 3600000 : (int)d;
}

void timers_free(timers_t *t)
{
    free(t->heap);
    t->heap = NULL;
    t->n = t->cap = 0;
}
