/* timer: a cached monotonic clock and a min-heap of deadlines for event loops.
 *
 * Deadlines that move later (an idle timeout pushed back by every request)
 * cost nothing: the node keeps its place in the heap and is re-filed only
 * when it reaches the top. Moving a deadline earlier sifts it up, O(log n). */
#ifndef CORE_TIMER_H
#define CORE_TIMER_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic milliseconds, as of the last time_update() on this thread. */
int64_t time_now_ms(void);
/* Read the clock into this thread's cache; loops call it once per wake-up. */
int64_t time_update(void);
/* Monotonic microseconds, read now (not cached). */
int64_t time_now_us(void);

typedef struct timer_node {
    int64_t when; /* key in the heap */
    int64_t want; /* the real deadline (>= when), 0 = none */
    size_t idx;   /* position in the heap + 1, 0 when not in it */
} timer_node_t;

typedef struct timers {
    timer_node_t **heap;
    size_t n, cap;
} timers_t;

/* Set node's deadline to `when` (ms), or cancel it with 0. Returns 0 or
 * -ENOMEM (the node is then left without a deadline). Cancelling never
 * fails, nor does filing while the heap has room (see timers_reserve). */
int timers_set(timers_t *t, timer_node_t *node, int64_t when);

/* Make room for at least n nodes, so that timers_set cannot fail while at most n are
 * filed: an event loop reserves one place per session when it accepts one,
 * rather than find out later that a WAIT has no deadline. Returns 0 or
 * -ENOMEM (the heap is then unchanged). */
int timers_reserve(timers_t *t, size_t n);

/* Remove and return one node whose deadline is <= now, or NULL. */
timer_node_t *timers_expired(timers_t *t, int64_t now);

/* Milliseconds until the earliest deadline (0 if due), -1 when there is none:
 * what epoll_wait/poll take as their timeout. */
int timers_timeout(const timers_t *t, int64_t now);

/* Free the heap (the nodes belong to their owners). */
void timers_free(timers_t *t);

#endif
