/* sandbox_arena: the allocator of a sandboxed Lua state, and its snapshots.
 *
 * A mapping at a fixed address holds the header and every block of one Lua
 * state. Blocks come in size classes (16-byte steps up to 512 bytes, then
 * four per power of two); a freed block goes on its class's free list, linked
 * through its own first word; new blocks are cut from a bump pointer. Lua
 * passes the old size to every free and realloc, so blocks carry no header.
 * The free list heads, the bump pointer and the budget are in the header at
 * the start of the mapping: copying the used bytes [0, bump) back restores
 * the allocator along with the state, and whatever a request allocated above
 * the snapshot's bump is simply forgotten. */
#include "sandbox_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define SMALL_MAX   512 /* classes of 16-byte steps up to here */
#define NSMALL      (SMALL_MAX / 16)
#define MAX_LOG     34  /* arenas of at most 16 GiB */
#define NCLASS      (NSMALL + (MAX_LOG - 9) * 4)
#define HEADER_SIZE ((sizeof(struct sb_arena) + 63) & ~(size_t)63)

struct sb_arena {
    size_t size;     /* of the mapping */
    size_t bump;     /* offset of the first byte never handed out */
    size_t live;     /* bytes in blocks handed out and not freed */
    size_t limit;    /* live may not exceed this */
    unsigned refused; /* refusals Lua did not recover from */
    int pending;     /* a refusal Lua may retry after an emergency collection */
    void *pend_ptr;
    size_t pend_osize, pend_nsize;
    void *free[NCLASS];
};

/* Class of a block of n bytes (n >= 1). */
static inline unsigned size_class(size_t n)
{
    if (n <= SMALL_MAX)
        return (unsigned)((n + 15) >> 4) - 1 + (n == 0);
    unsigned e = 63u - (unsigned)__builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n <= 2^(e+1) */
    unsigned sub = (unsigned)((n - 1) >> (e - 2)) & 3;
    return NSMALL + (e - 9) * 4 + sub;
}

static inline size_t class_size(unsigned c)
{
    if (c < NSMALL)
        return (size_t)(c + 1) << 4;
    unsigned e = (c - NSMALL) / 4 + 9, sub = (c - NSMALL) % 4;
    return (size_t)(5 + sub) << (e - 2);
}

/* The largest class whose blocks fit in n bytes (n >= 16), for a tail. */
static unsigned floor_class(size_t n)
{
    unsigned c = size_class(n);
    while (c > 0 && class_size(c) > n)
        c--;
    return c;
}

sb_arena_t *sb_arena_new(size_t size, size_t limit)
{
    if (size > ((size_t)1 << MAX_LOG))
        return NULL;
    /* MAP_NORESERVE: the budget, not the mapping, bounds what is used. */
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    sb_arena_t *a = p;
    a->size = size;
    a->bump = HEADER_SIZE;
    a->limit = limit;
    return a;
}

void sb_arena_free(sb_arena_t *a)
{
    if (a)
        munmap(a, a->size);
}

static void *take(sb_arena_t *a, size_t n)
{
    unsigned c = size_class(n);
    size_t sz = class_size(c);
    if (a->live + sz > a->limit)
        return NULL;
    void *p = a->free[c];
    if (p) {
        a->free[c] = *(void **)p;
    } else {
        if (a->bump + sz > a->size)
            return NULL;
        p = (char *)a + a->bump;
        a->bump += sz;
    }
    a->live += sz;
    return p;
}

static void give(sb_arena_t *a, void *p, unsigned c)
{
    *(void **)p = a->free[c];
    a->free[c] = p;
}

static void *resize(sb_arena_t *a, void *ptr, size_t osize, size_t nsize)
{
    if (ptr == NULL) /* osize is a type tag, not a size */
        return nsize ? take(a, nsize) : NULL;
    unsigned oc = size_class(osize);
    if (nsize == 0) {
        give(a, ptr, oc);
        a->live -= class_size(oc);
        return NULL;
    }
    unsigned nc = size_class(nsize);
    if (nc == oc)
        return ptr;
    if (nc < oc) {
        /* Shrink in place, so it can't fail (Lua assumes it won't); the
         * tail becomes a free block of the largest class it holds. */
        size_t keep = class_size(nc), tail = class_size(oc) - keep;
        give(a, (char *)ptr + keep, floor_class(tail));
        a->live -= tail;
        return ptr;
    }
    void *p = take(a, nsize);
    if (!p)
        return NULL;
    memcpy(p, ptr, osize);
    give(a, ptr, oc);
    a->live -= class_size(oc);
    return p;
}

/* A refused allocation is not yet a failure: Lua runs an emergency full
 * collection and asks again, with the same arguments. So a refusal stays
 * pending through the frees and shrinks of that collection; the retry
 * settles it (granted: no harm done), and anything else (or the end of the
 * call, sb_arena_settle) makes it count. */
void *sb_arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sb_arena_t *a = ud;
    if (__builtin_expect(a->pending, 0)) {
        if (ptr == a->pend_ptr && osize == a->pend_osize && nsize == a->pend_nsize) {
            a->pending = 0;
            void *p = resize(a, ptr, osize, nsize);
            if (!p)
                a->refused++;
            return p;
        }
        if (nsize != 0 && !(ptr && nsize < osize)) {
            a->pending = 0;
            a->refused++;
        }
    }
    void *p = resize(a, ptr, osize, nsize);
    if (!p && nsize) {
        a->pending = 1;
        a->pend_ptr = ptr;
        a->pend_osize = osize;
        a->pend_nsize = nsize;
    }
    return p;
}

unsigned sb_arena_settle(sb_arena_t *a)
{
    if (a->pending) {
        a->pending = 0;
        a->refused++;
    }
    return a->refused;
}

size_t sb_arena_live(const sb_arena_t *a) { return a->live; }
void sb_arena_set_limit(sb_arena_t *a, size_t limit) { a->limit = limit; }
unsigned sb_arena_refused(const sb_arena_t *a) { return a->refused; }
size_t sb_arena_used(const sb_arena_t *a) { return a->bump; }

static int by_offset(const void *x, const void *y)
{
    const sb_extent_t *a = x, *b = y;
    return a->off < b->off ? -1 : a->off > b->off;
}

/* The snapshot copies everything below the bump pointer except the inside
 * of large free blocks (the compiler's buffers, freed before the snapshot):
 * only their first word, the free list link, matters. */
int sb_snap_take(const sb_arena_t *a, sb_snap_t *snap)
{
    size_t nholes = 0, cap = 16;
    sb_extent_t *holes = malloc(cap * sizeof *holes), *ext = NULL;
    char *copy = malloc(a->bump);
    if (!holes || !copy)
        goto err;
    for (unsigned c = 0; c < NCLASS; c++) {
        size_t sz = class_size(c);
        if (sz < SB_HOLE_MIN)
            continue;
        for (void *p = a->free[c]; p; p = *(void **)p) {
            if (nholes == cap) {
                sb_extent_t *more = realloc(holes, 2 * cap * sizeof *holes);
                if (!more)
                    goto err;
                holes = more;
                cap *= 2;
            }
            holes[nholes++] = (sb_extent_t){(size_t)((char *)p - (char *)a), sz};
        }
    }
    qsort(holes, nholes, sizeof *holes, by_offset);
    ext = malloc((nholes + 1) * sizeof *ext);
    if (!ext)
        goto err;
    size_t n = 0, at = 0;
    for (size_t i = 0; i < nholes; i++) {
        ext[n++] = (sb_extent_t){at, holes[i].off + sizeof(void *) - at};
        at = holes[i].off + holes[i].len;
    }
    ext[n++] = (sb_extent_t){at, a->bump - at};
    memcpy(copy, a, a->bump);
    free(holes);
    snap->copy = copy;
    snap->len = a->bump;
    snap->ext = ext;
    snap->next = n;
    snap->copied = 0;
    for (size_t i = 0; i < n; i++)
        snap->copied += ext[i].len;
    return 0;
err:
    free(holes);
    free(ext);
    free(copy);
    return -ENOMEM;
}

void sb_snap_restore(sb_arena_t *a, const sb_snap_t *snap)
{
    for (size_t i = 0; i < snap->next; i++)
        memcpy((char *)a + snap->ext[i].off, snap->copy + snap->ext[i].off, snap->ext[i].len);
}

void sb_snap_free(sb_snap_t *snap)
{
    free(snap->copy);
    free(snap->ext);
    memset(snap, 0, sizeof *snap);
}

void sb_arena_trim(sb_arena_t *a, size_t keep)
{
    size_t page = 4096, from = (keep + page - 1) & ~(page - 1);
    if (from < a->size)
        madvise((char *)a + from, a->size - from, MADV_DONTNEED);
}
