/* link: one direction of an emulated link, as arithmetic (see link.h). */
#include "link.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int wl_dir_init(wl_dir_t *d, const wl_params_t *p, uint64_t seed)
{
    memset(d, 0, sizeof *d);
    d->p = *p;
    d->rng = seed;
    return 0;
}

void wl_dir_free(wl_dir_t *d)
{
    free(d->q);
    d->q = NULL;
    d->qcap = d->qn = 0;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double wl_uniform(uint64_t *state)
{
    return (double)(splitmix64(state) >> 11) * 0x1.0p-53;
}

double wl_normal(uint64_t *state)
{
    /* 1 - u is in (0, 1]: log never sees 0. The second sample of the pair
     * is thrown away, so a direction's state is one stream, simply. */
    double u1 = 1.0 - wl_uniform(state), u2 = wl_uniform(state);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

int64_t wl_tx_ns(uint64_t len, uint64_t rate_bps)
{
    if (rate_bps == 0)
        return 0;
    return (int64_t)((unsigned __int128)len * 8 * 1000000000ULL / rate_bps);
}

size_t wl_backlog(wl_dir_t *d, int64_t now)
{
    while (d->qn && d->q[d->qhead].done <= now) {
        d->qbytes -= d->q[d->qhead].len;
        d->qhead = (d->qhead + 1) % d->qcap;
        d->qn--;
    }
    return d->qn;
}

/* Make room for one more slot in the ring, keeping its order. */
static int ring_grow(wl_dir_t *d)
{
    size_t cap = d->qcap ? d->qcap * 2 : 64;
    wl_slot_t *q = malloc(cap * sizeof *q);
    if (!q)
        return -ENOMEM;
    for (size_t i = 0; i < d->qn; i++)
        q[i] = d->q[(d->qhead + i) % d->qcap];
    free(d->q);
    d->q = q;
    d->qcap = cap;
    d->qhead = 0;
    return 0;
}

/* When a packet of len bytes entering at now leaves the bottleneck. The
 * remainder of each division is carried to the next packet, so a long
 * busy period drifts by less than a nanosecond from len * 8 / rate. */
static int64_t serialize(wl_dir_t *d, int64_t now, uint32_t len)
{
    int64_t start = d->tx_free;
    if (start <= now) {
        start = now;
        d->tx_rem = 0; /* idle: where it stood within a nanosecond is moot */
    }
    unsigned __int128 num = (unsigned __int128)len * 8 * 1000000000ULL + d->tx_rem;
    d->tx_rem = (uint64_t)(num % d->p.rate_bps);
    d->tx_free = start + (int64_t)(num / d->p.rate_bps);
    return d->tx_free;
}

static int64_t jitter_ns(wl_dir_t *d)
{
    if (d->p.jitter_ns == 0)
        return 0;
    double s = d->p.jitter_dist == WL_NORMAL ? wl_normal(&d->rng) : 2.0 * wl_uniform(&d->rng) - 1.0;
    return (int64_t)llround(s * (double)d->p.jitter_ns);
}

int wl_admit(wl_dir_t *d, int64_t now, uint32_t len, int64_t *due)
{
    d->c.in++;
    d->c.bytes_in += len;
    if (d->p.loss > 0 && wl_uniform(&d->rng) < d->p.loss) {
        d->c.lost++;
        return WL_LOST;
    }
    int64_t done = now;
    if (d->p.rate_bps) {
        wl_backlog(d, now);
        if ((d->p.queue_pkts && d->qn >= d->p.queue_pkts) ||
            (d->p.queue_bytes && d->qbytes + len > d->p.queue_bytes)) {
            d->c.qdrop++;
            return WL_QDROP;
        }
        if (d->qn == d->qcap && ring_grow(d) < 0) {
            d->c.qdrop++;
            return -ENOMEM;
        }
        done = serialize(d, now, len);
        d->q[(d->qhead + d->qn) % d->qcap] = (wl_slot_t){.done = done, .len = len};
        d->qn++;
        d->qbytes += len;
    }
    int64_t t = done + d->p.delay_ns + jitter_ns(d);
    if (t < done)
        t = done;
    if (!d->p.reorder && t < d->last_due)
        t = d->last_due;
    if (t > d->last_due)
        d->last_due = t;
    *due = t;
    return WL_PASS;
}

/* A non-negative decimal number (no sign, no "inf", no hex) and where it ends. */
static int parse_number(const char *s, double *v, char **end)
{
    if (!s || !(isdigit((unsigned char)*s) || *s == '.'))
        return -EINVAL;
    errno = 0;
    *v = strtod(s, end);
    if (errno || *end == s || !isfinite(*v))
        return -EINVAL;
    return 0;
}

int wl_parse_rate(const char *s, uint64_t *bps)
{
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}};
    double v;
    char *end;
    if (parse_number(s, &v, &end) < 0)
        return -EINVAL;
    if (*end == '\0') {
        if (v != 0) /* a bare number: bits, bytes? Say which. */
            return -EINVAL;
        *bps = 0;
        return 0;
    }
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        if (strcasecmp(end, units[i].unit) != 0)
            continue;
        v *= units[i].mult;
        if (v < 1 || v > 1e13)
            return -EINVAL;
        *bps = (uint64_t)llround(v);
        return 0;
    }
    return -EINVAL;
}

int wl_parse_loss(const char *s, double *p)
{
    double v;
    char *end;
    if (parse_number(s, &v, &end) < 0)
        return -EINVAL;
    if (strcmp(end, "%") == 0)
        v /= 100;
    else if (*end != '\0')
        return -EINVAL;
    if (v > 1)
        return -EINVAL;
    *p = v;
    return 0;
}

int wl_split_pair(const char *s, char *a, char *b, size_t cap)
{
    const char *slash = strchr(s, '/');
    size_t la = slash ? (size_t)(slash - s) : strlen(s);
    const char *sb = slash ? slash + 1 : s;
    size_t lb = strlen(sb);
    if (la == 0 || lb == 0 || la >= cap || lb >= cap || strchr(sb, '/'))
        return -EINVAL;
    memcpy(a, s, la);
    a[la] = '\0';
    memcpy(b, sb, lb + 1);
    return 0;
}

static int item_less(const wl_item_t *x, const wl_item_t *y)
{
    return x->due < y->due || (x->due == y->due && x->seq < y->seq);
}

int wl_heap_push(wl_heap_t *h, wl_item_t it)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        wl_item_t *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && item_less(&it, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = it;
    return 0;
}

const wl_item_t *wl_heap_top(const wl_heap_t *h)
{
    return h->n ? &h->v[0] : NULL;
}

int wl_heap_pop(wl_heap_t *h, wl_item_t *out)
{
    if (h->n == 0)
        return -ENOENT;
    *out = h->v[0];
    wl_item_t last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && item_less(&h->v[c + 1], &h->v[c]))
            c++;
        if (!item_less(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = last;
    return 0;
}

void wl_heap_free(wl_heap_t *h)
{
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}
