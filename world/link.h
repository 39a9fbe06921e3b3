/* link: the pure part of the link emulator (bin/world-link), one direction
 * of an emulated link as a model with no I/O, so that its arithmetic is unit
 * tested (tests/unit/test_world_link.c) and the program around it (main.c)
 * only moves packets.
 *
 * A packet that enters a direction at time `now` goes through, in order:
 *   loss      Bernoulli(loss), seeded: a lost packet takes no queue space;
 *   queue     tail drop when the packets waiting for the bottleneck (and the
 *             one on it) already fill queue_pkts packets or queue_bytes bytes;
 *   rate      serialization: it leaves the bottleneck no earlier than the one
 *             before it, plus len * 8 / rate (rate 0: no bottleneck, no queue);
 *   delay     plus the one-way delay and a jitter sample: uniform on
 *             [-jitter, +jitter], or normal with standard deviation jitter,
 *             never below zero in total; unless `reorder`, a packet never
 *             leaves before the one ahead of it (the sample is raised).
 * Times are monotonic nanoseconds. */
#ifndef WORLD_LINK_H
#define WORLD_LINK_H

#include <stddef.h>
#include <stdint.h>

enum wl_jitter { WL_UNIFORM, WL_NORMAL };

typedef struct wl_params {
    int64_t delay_ns;     /* one-way */
    int64_t jitter_ns;    /* uniform: half-width; normal: standard deviation */
    int jitter_dist;      /* enum wl_jitter */
    int reorder;          /* 1: jitter may reorder packets */
    double loss;          /* probability in [0, 1] */
    uint64_t rate_bps;    /* bits per second, 0 = unlimited */
    uint64_t queue_pkts;  /* 0 = no limit in packets */
    uint64_t queue_bytes; /* 0 = no limit in bytes */
} wl_params_t;

/* Departure lateness in WL_LATE_STEP_NS steps: bucket 0 holds departures on
 * time (or early within the grace), the last one everything later. */
#define WL_LATE_STEP_NS 10000
#define WL_LATE_BUCKETS 101

typedef struct wl_counters {
    uint64_t in, out, lost, qdrop, err; /* packets */
    uint64_t bytes_in, bytes_out;
    uint64_t late[WL_LATE_BUCKETS]; /* departures by how late they left */
} wl_counters_t;

/* A packet in the bottleneck's queue: when it finishes serializing. */
typedef struct wl_slot {
    int64_t done;
    uint32_t len;
} wl_slot_t;

typedef struct wl_dir {
    wl_params_t p;
    uint64_t rng;     /* splitmix64 state */
    int64_t tx_free;  /* when the bottleneck finishes the last accepted packet */
    uint64_t tx_rem;  /* serialization time's remainder, in 1/rate ns */
    int64_t last_due; /* departure of the last accepted packet */
    wl_slot_t *q;     /* ring of the packets on or waiting for the bottleneck */
    size_t qcap, qhead, qn;
    uint64_t qbytes;
    wl_counters_t c;
} wl_dir_t;

enum { WL_PASS = 0, WL_LOST = 1, WL_QDROP = 2 };

/* Set up a direction with parameters p and a seed (each direction should have
 * its own). Returns 0 or -ENOMEM. */
int wl_dir_init(wl_dir_t *d, const wl_params_t *p, uint64_t seed);
void wl_dir_free(wl_dir_t *d);

/* A packet of len bytes enters the direction at now. Returns WL_PASS with
 * *due set to when it must leave (>= now), WL_LOST or WL_QDROP (counted),
 * or -ENOMEM (the queue could not grow; the packet is counted as a queue
 * drop). */
int wl_admit(wl_dir_t *d, int64_t now, uint32_t len, int64_t *due);

/* Packets on or waiting for the bottleneck at `now` (their count). */
size_t wl_backlog(wl_dir_t *d, int64_t now);

/* Serialization time of len bytes at rate_bps, in ns (0 when unlimited). */
int64_t wl_tx_ns(uint64_t len, uint64_t rate_bps);

/* Random numbers, splitmix64: a double in [0, 1); a normal sample (mean 0,
 * standard deviation 1, Box-Muller). */
double wl_uniform(uint64_t *state);
double wl_normal(uint64_t *state);

/* Parsers of the command line's values; each returns 0 or -EINVAL (nothing
 * stored). A rate: a number and one of bit, kbit, mbit, gbit (powers of
 * 1000, as tc's), or "0" for unlimited. A loss: "N%" with N in [0, 100], or
 * a probability in [0, 1]. */
int wl_parse_rate(const char *s, uint64_t *bps);
int wl_parse_loss(const char *s, double *p);

/* Split "A/B" into its halves for the two directions (a->b, b->a); a value
 * with no '/' is both. Copies into a and b (each of cap bytes). Returns 0 or
 * -EINVAL (an empty half, more than one '/', or too long). */
int wl_split_pair(const char *s, char *a, char *b, size_t cap);

/* Departures waiting in a min-heap keyed on (due, seq), seq the arrival
 * order, so that equal times leave in arrival order. */
typedef struct wl_item {
    int64_t due;
    uint64_t seq;
    void *pkt;
} wl_item_t;

typedef struct wl_heap {
    wl_item_t *v;
    size_t n, cap;
} wl_heap_t;

/* Add an item. Returns 0 or -ENOMEM. */
int wl_heap_push(wl_heap_t *h, wl_item_t it);
/* The earliest item, or NULL when empty. */
const wl_item_t *wl_heap_top(const wl_heap_t *h);
/* Remove the earliest item into *out. Returns 0, or -ENOENT when empty. */
int wl_heap_pop(wl_heap_t *h, wl_item_t *out);
void wl_heap_free(wl_heap_t *h);

#endif
