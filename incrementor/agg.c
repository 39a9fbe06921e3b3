#include "agg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define AGG_MIN_CAP 1024

void agg_init(agg_t *m)
{
    memset(m, 0, sizeof *m);
}

void agg_free(agg_t *m)
{
    free(m->slots);
    free(m->order);
    free(m->arena);
    agg_init(m);
}

void agg_clear(agg_t *m)
{
    /* A slot is empty by its hash alone (probe); agg_get zeroes the rest. */
    for (size_t k = 0; k < m->len; k++)
        m->slots[m->order[k]].hash = 0;
    m->len = 0;
    m->arena_len = 0;
}

uint64_t agg_hash(const char *key, size_t len)
{
    /* FNV-1a, then a final mix so that linear probing sees well spread
     * low bits even for keys that differ only in their last byte. */
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h ? h : 1;
}

static agg_entry_t *probe(const agg_t *m, uint64_t h, const char *key, size_t len)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        agg_entry_t *e = &m->slots[i];
        if (e->hash == 0)
            return e;
        if (e->hash == h && e->key_len == len && memcmp(m->arena + e->key_off, key, len) == 0)
            return e;
    }
}

static int grow(agg_t *m)
{
    size_t cap = m->cap ? m->cap * 2 : AGG_MIN_CAP;
    if (cap - 1 > UINT32_MAX)
        return -ENOMEM; /* slot indexes are 32-bit (order) */
    agg_entry_t *slots = calloc(cap, sizeof *slots);
    uint32_t *order = malloc(cap / 2 * sizeof *order);
    if (!slots || !order) {
        free(slots);
        free(order);
        return -ENOMEM;
    }
    /* Rehash in insertion order, which the new order keeps. */
    for (size_t k = 0; k < m->len; k++) {
        agg_entry_t *e = &m->slots[m->order[k]];
        size_t j = e->hash & (cap - 1);
        while (slots[j].hash)
            j = (j + 1) & (cap - 1);
        slots[j] = *e;
        order[k] = (uint32_t)j;
    }
    free(m->slots);
    free(m->order);
    m->slots = slots;
    m->order = order;
    m->cap = cap;
    return 0;
}

agg_entry_t *agg_find(const agg_t *m, const char *key, size_t len)
{
    if (!m->cap)
        return NULL;
    agg_entry_t *e = probe(m, agg_hash(key, len), key, len);
    return e->hash ? e : NULL;
}

agg_entry_t *agg_get(agg_t *m, const char *key, size_t len)
{
    uint64_t h = agg_hash(key, len);
    if (m->cap) {
        agg_entry_t *e = probe(m, h, key, len);
        if (e->hash)
            return e;
    }
    /* Absent: make room first (load factor at most 1/2), then insert. */
    if ((m->len + 1) * 2 > m->cap && grow(m) < 0)
        return NULL;
    if (m->arena_len + len > UINT32_MAX)
        return NULL; /* offsets are 32-bit: 4 GiB of keys in one window is refused */
    if (m->arena_len + len > m->arena_cap) {
        size_t cap = m->arena_cap ? m->arena_cap : 16384;
        while (cap < m->arena_len + len)
            cap *= 2;
        char *a = realloc(m->arena, cap);
        if (!a)
            return NULL;
        m->arena = a;
        m->arena_cap = cap;
    }
    agg_entry_t *e = probe(m, h, key, len);
    memset(e, 0, sizeof *e);
    e->hash = h;
    e->key_off = (uint32_t)m->arena_len;
    e->key_len = (uint32_t)len;
    memcpy(m->arena + m->arena_len, key, len);
    m->arena_len += len;
    m->order[m->len++] = (uint32_t)(e - m->slots);
    return e;
}

agg_entry_t *agg_next(const agg_t *m, size_t *i)
{
    return *i < m->len ? &m->slots[m->order[(*i)++]] : NULL;
}
