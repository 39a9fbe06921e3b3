/* agg: the aggregation map of the incrementor, key -> per-key sums.
 *
 * An open-addressing hash table (linear probing) whose keys are copied into
 * one arena, with the used slots listed in insertion order. Clearing it for
 * the next flush window and iterating it cost what it holds, not its
 * capacity: a map grown once to 10,000 keys is cleared and walked after
 * each durable commit of a few dozen (flush.c), and a memset of the whole
 * table was a sixth of that mode's instructions. Clearing keeps every
 * allocation. One map is owned by one thread at a time: the
 * loop threads fill theirs, the writer takes them at each flush (under the
 * owner's lock, see service.h), and merges them into its own. */
#ifndef INCR_AGG_H
#define INCR_AGG_H

#include <stddef.h>
#include <stdint.h>

typedef struct agg_entry {
    uint64_t hash;    /* 0 = empty slot */
    uint32_t key_off; /* into the arena */
    uint32_t key_len;
    int64_t sum;    /* acknowledged delta (the "fast" increments) */
    uint64_t mag;   /* sum of |v| of those increments (bounded, see service.h) */
    int64_t slow;   /* writer only: delta of the deferred requests accepted in this batch */
    int64_t value;  /* writer only: committed value, when `known` */
    uint32_t count; /* increments summed into this entry */
    uint8_t known;  /* writer only: `value` was read in the current transaction */
} agg_entry_t;

typedef struct agg {
    agg_entry_t *slots;
    uint32_t *order; /* the used slots' indexes, in insertion order (room for cap / 2) */
    size_t cap, len; /* cap is a power of two, len the used slots */
    char *arena;
    size_t arena_len, arena_cap;
} agg_t;

/* An empty map (all zero is also a valid empty map). */
void agg_init(agg_t *m);

/* Free everything the map holds. */
void agg_free(agg_t *m);

/* Forget every entry, keeping the memory for the next window. */
void agg_clear(agg_t *m);

/* Hash of a key (never 0). */
uint64_t agg_hash(const char *key, size_t len);

/* The entry of key, created zeroed (with a copy of the key) when absent.
 * Returns NULL only when out of memory (the map is unchanged then).
 * Entry pointers stay valid until the next agg_get or agg_clear. */
agg_entry_t *agg_get(agg_t *m, const char *key, size_t len);

/* The entry of key, or NULL when absent. */
agg_entry_t *agg_find(const agg_t *m, const char *key, size_t len);

/* The bytes of an entry's key (not NUL-terminated). */
static inline const char *agg_key(const agg_t *m, const agg_entry_t *e)
{
    return m->arena + e->key_off;
}

/* Iterate: `for (size_t i = 0; (e = agg_next(m, &i));)` visits each entry
 * once, in the order the entries were created. */
agg_entry_t *agg_next(const agg_t *m, size_t *i);

#endif
