#include "persec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int persec_grow(persec_t *p, size_t n)
{
    if (n <= p->n)
        return 0;
    lg_sec_t *v = realloc(p->v, n * sizeof *v);
    if (!v)
        return -ENOMEM;
    memset(v + p->n, 0, (n - p->n) * sizeof *v);
    p->v = v;
    p->n = n;
    return 0;
}

int persec_add_hist(lg_sec_t *sec, const hist_t *h)
{
    if (h->count == 0)
        return 0;
    uint32_t n = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        n += h->counts[i] != 0;
    uint32_t *p = realloc(sec->pairs, 2 * (size_t)(sec->n + n) * sizeof *p);
    if (!p)
        return -ENOMEM;
    /* A second is added once, unless a thread's clock went back; append and
     * let the merge combine duplicates. */
    uint32_t k = sec->n;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        if (h->counts[i]) {
            p[2 * k] = i;
            p[2 * k + 1] = (uint32_t)h->counts[i];
            k++;
        }
    sec->pairs = p;
    sec->n = k;
    return 0;
}

static int sec_merge(lg_sec_t *dst, const lg_sec_t *src)
{
    dst->requests += src->requests;
    dst->errors += src->errors;
    if (src->n == 0)
        return 0;
    uint32_t *p = malloc(2 * (size_t)(dst->n + src->n) * sizeof *p);
    if (!p)
        return -ENOMEM;
    /* Both lists are sorted by bucket except for rare appended runs; a
     * counting pass over the buckets keeps it simple and exact. */
    static __thread uint64_t tmp[HIST_BUCKETS];
    memset(tmp, 0, sizeof tmp);
    for (uint32_t i = 0; i < dst->n; i++)
        tmp[dst->pairs[2 * i]] += dst->pairs[2 * i + 1];
    for (uint32_t i = 0; i < src->n; i++)
        tmp[src->pairs[2 * i]] += src->pairs[2 * i + 1];
    uint32_t k = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        if (tmp[i]) {
            p[2 * k] = i;
            p[2 * k + 1] = (uint32_t)tmp[i];
            k++;
        }
    free(dst->pairs);
    dst->pairs = p;
    dst->n = k;
    return 0;
}

int persec_merge(persec_t *dst, const persec_t *src)
{
    if (persec_grow(dst, src->n) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < src->n; i++)
        if (sec_merge(&dst->v[i], &src->v[i]) < 0)
            return -ENOMEM;
    return 0;
}

void persec_to_hist(const lg_sec_t *s, hist_t *h)
{
    hist_reset(h);
    for (uint32_t i = 0; i < s->n; i++) {
        uint32_t b = s->pairs[2 * i];
        h->counts[b] += s->pairs[2 * i + 1];
        h->count += s->pairs[2 * i + 1];
        if (i == 0 || hist_bucket_low(b) < h->min)
            h->min = hist_bucket_low(b);
        if (hist_bucket_high(b) > h->max)
            h->max = hist_bucket_high(b);
    }
}

uint64_t persec_p99(const lg_sec_t *s)
{
    uint64_t total = 0, seen = 0;
    for (uint32_t i = 0; i < s->n; i++)
        total += s->pairs[2 * i + 1];
    if (total == 0)
        return 0;
    uint64_t rank = (total * 99 + 99) / 100;
    for (uint32_t i = 0; i < s->n; i++) {
        seen += s->pairs[2 * i + 1];
        if (seen >= rank)
            return hist_bucket_high(s->pairs[2 * i]);
    }
    return 0;
}

void persec_free(persec_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->v[i].pairs);
    free(p->v);
    p->v = NULL;
    p->n = 0;
}
