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
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define SMALL_MAX   512 /* classes of 16-byte steps up to here */
#define NSMALL      (SMALL_MAX / 16)
#define MAX_LOG     34 /* arenas of at most 16 GiB */
#define NCLASS      (NSMALL + (MAX_LOG - 9) * 4)
#define HEADER_SIZE ((sizeof(struct sb_arena) + 63) & ~(size_t)63)

struct sb_arena {
    size_t size;      /* of the mapping */
    size_t bump;      /* offset of the first byte never handed out */
    size_t live;      /* bytes in blocks handed out and not freed */
    size_t limit;     /* live may not exceed this */
    unsigned refused; /* refusals Lua did not recover from */
    int pending;      /* a refusal Lua may retry after an emergency collection */
    void *pend_ptr;
    size_t pend_osize, pend_nsize;
    void *free[NCLASS];
};

/* Class of a block of n bytes (n >= 1). */
static inline unsigned size_class(size_t n)
{
    if (n <= SMALL_MAX)
        return (unsigned)((n + 15) >> 4) - 1 + (n == 0);
    unsigned e =
        63u - (unsigned)__builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n <= 2^(e+1) */
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

size_t sb_arena_live(const sb_arena_t *a)
{
    return a->live;
}
void sb_arena_set_limit(sb_arena_t *a, size_t limit)
{
    a->limit = limit;
}
unsigned sb_arena_refused(const sb_arena_t *a)
{
    return a->refused;
}
size_t sb_arena_used(const sb_arena_t *a)
{
    return a->bump;
}

/* ---- snapshots ----
 *
 * Restoring a snapshot must undo every byte a request wrote, but requests
 * write few pages of their state (hello: a few cache lines on 2 of its 5
 * pages), and copying every page back was most of the sandbox's cost. So the
 * pages of a snapshot start write-protected; the first write to one faults,
 * and the handler makes the page hot: writable, and copied back by every
 * restore from then on. A restore copies the hot pages only: its cost
 * follows what the tenant's requests write, not the size of its state.
 *
 * A page is faulted at most once: a fault and its mprotect cost about 20 us
 * in a VM here, as much as copying 300 pages, so a page written once is
 * copied from then on rather than protected again. Protection splits the
 * arena's mapping: a run of hot pages among read-only ones costs two more
 * mappings, and a process has 65530 for everything (threads' stacks, malloc,
 * files), which tenants choosing their writes must not use up. So a snapshot
 * whose hot pages make more than SB_MAX_RUNS runs, or are most of its pages, or
 * that finds the process-wide budget of mappings for snapshots spent (a
 * quarter of vm.max_map_count), drops its protection: every restore then
 * copies every page.
 *
 * Exactness does not depend on which pages are hot: a page that is not hot
 * has not been written since the snapshot was taken. The handler acts only
 * for the arena the calling thread restored last (the one it runs), on a
 * protected page. It is also the sandbox's one SIGSEGV handler for the stack
 * sandboxed calls run on: a fault on that stack's guard cuts the call
 * (sb_guard_fault, sandbox_limit.c), so it is installed even when nothing
 * is protected, and runs on the thread's alternate signal stack. Any other
 * fault goes to the handler it replaced. */

#define PAGE 4096

static __thread sb_arena_t *cur_arena; /* the arena this thread restored last */
static __thread sb_snap_t *cur_snap;
static struct sigaction prev_segv; /* never on_fault itself */
static int protect_off;            /* SANDBOX_NOPROTECT, or pages are not 4 KiB: copy every page */
static long maps_left;             /* atomic: mappings snapshots may still add to the process */

/* Take n (may be negative: give back) of the budget of mappings for s.
 * Returns 0, or -1 when it is spent. Async-signal-safe. */
static int charge(sb_snap_t *s, long n)
{
    if (__atomic_sub_fetch(&maps_left, n, __ATOMIC_RELAXED) < 0 && n > 0) {
        __atomic_add_fetch(&maps_left, n, __ATOMIC_RELAXED);
        return -1;
    }
    s->maps += n;
    return 0;
}

/* Every page copied by every restore, and writable (one mapping again; a
 * page left read-only by a failed mprotect is made writable by the handler
 * when written). Async-signal-safe. */
static void go_full(sb_arena_t *a, sb_snap_t *s)
{
    if (s->armed)
        mprotect(a, s->npages * PAGE, PROT_READ | PROT_WRITE);
    s->armed = 0;
    s->full = 1;
    charge(s, -s->maps);
}

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
    int saved = errno;
    sb_snap_t *s = cur_snap;
    sb_arena_t *a = cur_arena;
    uintptr_t at = (uintptr_t)si->si_addr, base = (uintptr_t)a;
    if (s && (s->armed || s->full) && si->si_code == SEGV_ACCERR && at >= base &&
        at < base + s->npages * PAGE) {
        size_t i = (at - base) / PAGE;
        char *page = (char *)a + i * PAGE;
        if (!s->full && !s->hot[i]) {
            int left = i > 0 && s->hot[i - 1], right = i + 1 < s->npages && s->hot[i + 1];
            int more = 1 - left - right; /* runs: a new one, one longer, two joined */
            s->hot[i] = 1;
            s->changed = 1;
            s->runs_now += more;
            if (s->runs_now > SB_MAX_RUNS || charge(s, 2 * more) < 0)
                go_full(a, s);
        }
        /* In full mode too: a page a failed mprotect left read-only. */
        int ok = mprotect(page, PAGE, PROT_READ | PROT_WRITE) == 0;
        if (!ok && !s->full) { /* can't split the mapping: everything writable */
            go_full(a, s);
            ok = mprotect(page, PAGE, PROT_READ | PROT_WRITE) == 0;
        }
        if (ok) {
            errno = saved;
            return;
        }
    }
    sb_guard_fault(si->si_addr); /* on the sandbox's stack's guard: does not return */
    /* Not ours: as if this handler were not there, with the faulting code's
     * signal mask (that handler may not return), but no time-limit jump
     * into the middle of it. */
    sigset_t mask = ((ucontext_t *)ctx)->uc_sigmask;
    sigaddset(&mask, SB_SIGNAL);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    errno = saved;
    if (prev_segv.sa_flags & SA_SIGINFO) {
        prev_segv.sa_sigaction(sig, si, ctx);
    } else if (prev_segv.sa_handler != SIG_DFL && prev_segv.sa_handler != SIG_IGN) {
        prev_segv.sa_handler(sig);
    } else {
        signal(SIGSEGV, SIG_DFL); /* the faulting instruction runs again, and dies */
    }
}

int sb_snap_claim(void)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    const int flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    struct sigaction sa = {.sa_sigaction = on_fault, .sa_flags = flags}, now;
    int rc = 0;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SB_SIGNAL); /* no time-limit jump out of the handler */
    pthread_mutex_lock(&lock);
    if (sigaction(SIGSEGV, NULL, &now) < 0) {
        rc = -errno;
    } else if (now.sa_sigaction != on_fault || (now.sa_flags & flags) != flags) {
        /* Ours, put back by signal() (a test framework's) without its flags:
         * installed again, chaining to the same one as before. Otherwise
         * the current handler is recorded, before ours is in place, so a
         * fault on another thread in between finds it. (Only tests claim
         * while other threads run.) */
        if (now.sa_sigaction != on_fault)
            prev_segv = now;
        if (sigaction(SIGSEGV, &sa, NULL) < 0)
            rc = -errno;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int sb_snap_init(void)
{
    long max = 65530;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    if (f) {
        if (fscanf(f, "%ld", &max) != 1)
            max = 65530;
        fclose(f);
    }
    __atomic_store_n(&maps_left, max / 4, __ATOMIC_RELAXED);
    protect_off = getenv("SANDBOX_NOPROTECT") != NULL || sysconf(_SC_PAGESIZE) != PAGE;
    return sb_snap_claim();
}

int sb_snap_take(const sb_arena_t *a, sb_snap_t *snap)
{
    memset(snap, 0, sizeof *snap);
    snap->len = a->bump;
    snap->npages = (a->bump + PAGE - 1) / PAGE;
    snap->copy = malloc(snap->npages * PAGE);
    snap->hot = calloc(snap->npages, 1);
    if (!snap->copy || !snap->hot) {
        sb_snap_free(snap);
        return -ENOMEM;
    }
    /* Whole pages: the tail of the last one is part of the state too (the
     * bump pointer hands it out next). */
    memcpy(snap->copy, a, snap->npages * PAGE);
    snap->full = protect_off;
    return 0;
}

/* The runs of hot pages, after faults made new ones. */
static void find_runs(sb_arena_t *a, sb_snap_t *snap)
{
    size_t n = snap->npages, nhot = 0;
    snap->changed = 0;
    snap->nruns = 0;
    for (size_t i = 0; i < n; i++) {
        if (!snap->hot[i])
            continue;
        nhot++;
        sb_run_t *last = snap->nruns ? &snap->runs[snap->nruns - 1] : NULL;
        if (last && last->first + last->n == i) {
            last->n++;
        } else if (snap->nruns == SB_MAX_RUNS) { /* the handler went full before this */
            go_full(a, snap);
            return;
        } else {
            snap->runs[snap->nruns++] = (sb_run_t){i, 1};
        }
    }
    if (2 * nhot > n) /* most pages hot: protecting the rest saves little */
        go_full(a, snap);
}

void sb_snap_restore(sb_arena_t *a, sb_snap_t *snap)
{
    size_t n = snap->npages, copied = 0;
    cur_arena = a;
    cur_snap = snap;
    if (!snap->armed && !snap->full) { /* the first restore: every page read-only */
        memcpy(a, snap->copy, n * PAGE);
        snap->copied = n * PAGE;
        snap->armed = 1;
        if (charge(snap, 1) < 0 || mprotect(a, n * PAGE, PROT_READ) < 0)
            go_full(a, snap);
        return;
    }
    if (snap->changed && !snap->full)
        find_runs(a, snap);
    if (snap->full) {
        memcpy(a, snap->copy, n * PAGE);
        snap->copied = n * PAGE;
        return;
    }
    for (size_t k = 0; k < snap->nruns; k++) {
        const sb_run_t *r = &snap->runs[k];
        memcpy((char *)a + r->first * PAGE, snap->copy + r->first * PAGE, r->n * PAGE);
        copied += r->n;
    }
    snap->copied = copied * PAGE;
}

void sb_snap_free(sb_snap_t *snap)
{
    charge(snap, -snap->maps);
    if (cur_snap == snap) {
        cur_snap = NULL;
        cur_arena = NULL;
    }
    free(snap->copy);
    free(snap->hot);
    memset(snap, 0, sizeof *snap);
}

void sb_arena_trim(sb_arena_t *a, size_t keep)
{
    size_t page = 4096, from = (keep + page - 1) & ~(page - 1);
    if (from < a->size)
        madvise((char *)a + from, a->size - from, MADV_DONTNEED);
}
