/* sandbox_int: what the sandbox's files share. Not an API: servers use
 * sandbox.h.
 *
 *   sandbox_registry.c  tenants, versions, the loader, the tenants directory
 *                       and the reloader; set-up and counters
 *   sandbox_state.c     building a tenant's Lua state; the request API
 *   sandbox_run.c       runners, and one request in a fresh sandbox
 *   sandbox_arena.c     the allocator of a state, and its snapshots
 *   sandbox_limit.c     the time limit, and the stack guarded calls run on */
#ifndef SANDBOX_SANDBOX_INT_H
#define SANDBOX_SANDBOX_INT_H

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <lua.h>

#include "sandbox.h"

/* ---- the arena (sandbox_arena.c) ----
 *
 * One fixed-address mapping holding a whole Lua state: a header (sizes, the
 * budget, free lists) and then the blocks. All the allocator's metadata is
 * inside, so copying the used bytes back restores the allocator too. */
typedef struct sb_arena sb_arena_t;

#define SB_MAX_RUNS 16 /* runs of hot pages a protected snapshot may have */

typedef struct sb_run {
    size_t first, n; /* pages */
} sb_run_t;

/* A copy of an arena's used pages, and which of them a restore copies back
 * (see "snapshots" in sandbox_arena.c). Owned by one thread. */
typedef struct sb_snap {
    char *copy;
    size_t len;                 /* bytes below the bump pointer when taken */
    size_t npages;              /* pages copied: [0, npages * 4096) */
    uint8_t *hot;               /* per page: written since the snapshot (else read-only) */
    sb_run_t runs[SB_MAX_RUNS]; /* runs of hot pages, as of the last restore */
    size_t nruns;
    int changed;   /* pages became hot since */
    long runs_now; /* runs of hot pages, kept by the fault handler */
    long maps;     /* mappings its protection adds to the process (charged) */
    int armed;     /* the pages that are not hot are read-only */
    int full;      /* no protection: every restore copies every page */
    size_t copied; /* bytes the last restore copied back */
} sb_snap_t;

/* Map an arena of `size` bytes (address space only, pages come on first
 * touch) with a budget of `limit` live bytes. NULL when the mapping fails. */
sb_arena_t *sb_arena_new(size_t size, size_t limit);
void sb_arena_free(sb_arena_t *a);

/* The lua_Alloc function; its ud is the arena. Refuses (returns NULL) when
 * the budget or the arena is exhausted, and counts the refusal. */
void *sb_arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Bytes in live blocks. */
size_t sb_arena_live(const sb_arena_t *a);
/* Let live blocks grow to `limit` bytes from now on. */
void sb_arena_set_limit(sb_arena_t *a, size_t limit);
/* Refusals Lua did not recover from since the arena was made or restored. */
unsigned sb_arena_refused(const sb_arena_t *a);
/* At the end of a call: a refusal still pending counts. Returns the count. */
unsigned sb_arena_settle(sb_arena_t *a);
/* Bytes of the mapping in use (header and every block ever handed out). */
size_t sb_arena_used(const sb_arena_t *a);

/* Install the SIGSEGV handler: write faults on snapshot pages, and faults on
 * the guard of the stack guarded calls run on (once, before any restore or
 * guarded call). SANDBOX_NOPROTECT in the environment turns the tracking off:
 * every restore copies every page. Returns 0 or -errno. */
int sb_snap_init(void);
/* Install that handler again if another replaced it (it then chains to
 * that one). Returns 0 or -errno. */
int sb_snap_claim(void);
/* Copy the used pages into snap (malloc'd; free with sb_snap_free).
 * Returns 0 or -ENOMEM. */
int sb_snap_take(const sb_arena_t *a, sb_snap_t *snap);
/* Put the arena back exactly as it was when snap was taken, and make it the
 * calling thread's running arena: until the next restore on this thread,
 * writes to its clean pages are tracked (so run nothing on an arena but
 * right after its restore). The first restore write-protects the pages. */
void sb_snap_restore(sb_arena_t *a, sb_snap_t *snap);
void sb_snap_free(sb_snap_t *snap);

/* Give the pages above the snapshot back to the kernel (MADV_DONTNEED). */
void sb_arena_trim(sb_arena_t *a, size_t keep);

/* ---- the time limit and the stack (sandbox_limit.c) ---- */

#define SB_SIGNAL (SIGRTMIN + 3) /* the watchdog's, to a runner over its deadline */

/* The stack every guarded call runs on (see "the stack" in sandbox_limit.c).
 * Lua's own bound of nested C calls (LUAI_MAXCCALLS, 200 levels) takes at
 * most 421 KB of it in the shapes measured (x86-64, Debian's liblua 5.4.4:
 * string.gsub callbacks; string.format of __tostring 328 KB, load() readers
 * 226 KB, pcall 150 KB, metamethods 50 to 90 KB): at 1 MiB a program Lua
 * allows never meets the guard, only C recursion that Lua fails to count
 * does. It is address space: a call touches the pages it uses. */
#define SB_STACK_SIZE  (1 << 20)
#define SB_STACK_GUARD (64 << 10) /* PROT_NONE below it: more than any C frame */

/* How a guarded call was cut (sigsetjmp's value after the jump). */
enum { SB_CUT_TIME = 1, SB_CUT_STACK = 2 };

/* A runner's side of the time limit, and its stack. The watchdog thread
 * reads deadline and seq; the signal handlers, on the runner's thread, read
 * the rest. */
typedef struct sb_guard {
    pid_t tid;
    sigjmp_buf jb;
    lua_State *L;              /* the state being run (NULL while it is being made) */
    lua_State *cur;            /* the thread of L running now: L or a coroutine */
    int in_call;               /* between sb_guard_enter and sb_guard_leave */
    uint64_t seq;              /* calls so far: tells a stale signal from a fresh one */
    int64_t deadline;          /* sb_ticks: the hook from here */
    int64_t grace;             /* ... and the jump from deadline + grace */
    uint64_t kill_seq;         /* written by the watchdog before it signals */
    int kill_stage;            /* 1: set the hook, 2: jump */
    volatile sig_atomic_t hit; /* the deadline passed during this call */
    char *stack_map;           /* the stack's mapping: the guard, then the stack */
    char *stack_lo;            /* the stack is [stack_lo, stack_lo + SB_STACK_SIZE) */
    unsigned stack_id;         /* valgrind's id of the stack */
    void (*fn)(void *);        /* the function sb_guard_call runs there, and its argument */
    void *arg;
    void *asan_fake; /* AddressSanitizer's account of the switches (its builds only) */
    const void *asan_bottom;
    size_t asan_size;
    int asan_on; /* ... it was told the sandbox's stack is the one in use */
    struct sb_guard *next;
    struct sb_guard *prev_self; /* the thread's guard before this one (nested use) */
} sb_guard_t;

/* Install the signal handler and start the watchdog. Returns 0 or -errno. */
int sb_limit_init(void);
/* Stop the watchdog (tests, valgrind). */
void sb_limit_shutdown(void);
/* The shortest time limit in use, so the watchdog looks often enough. */
void sb_limit_shortest(int ms);

/* Register g for the calling thread; it stays the thread's guard until
 * unregistered (then the previous one is back). Maps g's stack, and gives
 * the thread an alternate signal stack if it has none (the handlers run
 * there: the sandbox's stack may be full). Returns 0 or -errno (nothing
 * registered). */
int sb_guard_register(sb_guard_t *g);
void sb_guard_unregister(sb_guard_t *g);

/* Monotonic nanoseconds. */
int64_t sb_now_ns(void);

/* The CPU time the calling thread has used, in sb_ticks units (a system
 * call: some 0.5 us, so the request path reads it only when it must). */
int64_t sb_thread_cpu_ticks(void);

/* A cheap clock for the request path: the TSC when it is invariant (two
 * reads cost 30 ns where two clock_gettime cost 75 ns in a VM), else
 * nanoseconds. sb_ticks_per_ms converts. */
extern int sb_use_tsc;
extern int64_t sb_ticks_per_ms;
static inline int64_t sb_ticks(void)
{
#if defined(__x86_64__)
    if (sb_use_tsc)
        return (int64_t)__builtin_ia32_rdtsc();
#endif
    return sb_now_ns();
}

/* Begin a guarded call of at most ms milliseconds on state L (which may be
 * NULL until it exists: then only the jump can stop it). Then:
 *     switch (sigsetjmp(g->jb, 0)) {
 *     case 0: sb_guard_enter(g); sb_guard_call(g, fn, arg); sb_guard_leave(g); break;
 *     default: sb_guard_jumped(g);  -- cut (SB_CUT_TIME, _STACK): the state is garbage
 *     } */
void sb_guard_arm(sb_guard_t *g, lua_State *L, int64_t start_ticks, int ms);

static inline void sb_guard_enter(sb_guard_t *g)
{
    __atomic_store_n(&g->in_call, 1, __ATOMIC_RELEASE);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static inline void sb_guard_leave(sb_guard_t *g)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&g->in_call, 0, __ATOMIC_RELEASE);
}

/* Call fn(arg) on g's stack (no system call on x86-64 and arm64). A fault
 * on the stack's guard cuts the call with SB_CUT_STACK. */
void sb_guard_call(sb_guard_t *g, void (*fn)(void *), void *arg);

/* After a jump: unblock the signal (the handler did not return). */
void sb_guard_jumped(sb_guard_t *g);

/* From the SIGSEGV handler (sandbox_arena.c): when addr is on the guard of
 * the stack of the calling thread's guarded call, jump out of that call
 * (does not return); otherwise return. */
void sb_guard_fault(void *addr);

/* Lua thread co (a coroutine being resumed or closed, or its resumer when
 * that is over) runs now in the calling thread's guarded call, if any: the
 * first stage of the time limit hooks that thread, and co is hooked at once
 * when the deadline has passed already. (sandbox_state.c's coroutine
 * functions.) */
void sb_guard_running(lua_State *co);

/* The hook raising "time limit exceeded". */
void sb_timeout_hook(lua_State *L, lua_Debug *ar);

/* ---- tenants, states and runners (sandbox_registry.c, sandbox_state.c,
 * sandbox_run.c) ---- */

#define SB_ERR_MAX 256 /* a runner's error text */

/* A version of a tenant: its source and limits, shared by the registry and
 * every state built from it (sb_version_release drops a reference). */
typedef struct sb_version {
    int refs; /* atomic */
    char *src;
    size_t len;
    sandbox_limits_t lim;
} sb_version_t;

/* Counters of one (runner, tenant): one writer, read by sandbox_stats. */
typedef struct sb_counts {
    uint64_t requests, outcomes[SB_OUTCOMES], limit_memory, limit_time, limit_stack, ticks,
        restored;
    struct sb_counts *next;
    struct sb_slot *slot; /* whose: so that a publisher finds the runners serving the tenant */
} sb_counts_t;

/* A tenant's record (sandbox_registry.c's). The request path reads gen
 * only; everything else is the registry's. */
typedef struct sb_tenant {
    char name[SANDBOX_NAME_MAX + 1];
    pthread_mutex_t lock;  /* guards cur, spare, counts, its slots' job, the totals below */
    sb_version_t *cur;     /* NULL: not served */
    struct sb_slot *spare; /* cur built by its publisher, for the first new runner to want it */
    uint64_t gen;          /* atomic: changes with cur */
    sb_counts_t *counts;   /* one per runner that has a slot */
    sb_counts_t retired;   /* of runners freed since */
    uint64_t reloads, reload_errors, load_limit_memory, load_limit_time, load_limit_stack;
    int from_dir, seen; /* for sandbox_scan */
    struct stat lua_st, conf_st;
    int has_conf;
    struct sb_tenant *next;
} sb_tenant_t;

/* A state the loader builds for one slot (sandbox_registry.c's). */
typedef struct sb_job sb_job_t;

/* A runner's slot for one tenant: the state it serves and its counters.
 * Owned by the runner's thread; job is the one field others write. */
typedef struct sb_slot {
    char name[SANDBOX_NAME_MAX + 1];
    size_t name_len;
    sb_tenant_t *t;
    uint64_t gen;      /* of the version built (or found missing) */
    sb_version_t *ver; /* the version the snapshot was built from */
    sb_arena_t *a;     /* NULL: nothing built */
    sb_snap_t snap;
    lua_State *L;
    uint64_t *rand;   /* math.random's state, inside the arena */
    int removed;      /* the tenant is not served */
    int64_t share;    /* fair-share bucket: run time not yet drained (ticks) */
    int64_t hold;     /* the loop's time it held (clock, ticks), draining at twice the share */
    int64_t share_at; /* when they were last drained */
    int share_exact;  /* charge the next request its CPU time, not its wall time */
    sb_counts_t *counts;
    sb_job_t *job; /* atomic, written under the tenant's lock: a state of a newer
                      version, built or being built for this slot */
} sb_slot_t;

struct sandbox_runner {
    sb_guard_t guard;
    sb_slot_t **tab; /* open addressing, power-of-two size */
    size_t cap, n;
    const sandbox_req_t *req;
    uint64_t rnd[2048]; /* entropy from getrandom, 16 bytes per request */
    size_t rnd_left;
    char err[SB_ERR_MAX];
    char lower[512]; /* a lower-cased header name */
};

/* The runner running a request on this thread: where req's fields come
 * from (sandbox_state.c's request API; set by whoever calls handle()). Not
 * bound into the state: a state is built on another thread. */
extern __thread sandbox_runner_t *sb_running;

/* -- sandbox_state.c -- */

/* Build version v of tenant `name` in a new arena, on r's thread and guard,
 * under v's limits (the time limit at least LOAD_MS_MIN). On success fills
 * out's a, snap, L and rand (not ver) and returns 0; the state's Lua stack
 * is [entry, handle, req], ready for a request (push the runner, then
 * lua_pcall 3 arguments, 3 results). Otherwise returns -1 with the reason in
 * r->err, and *limit says which limit was hit (0 none, 1 memory, 2 time,
 * 3 stack). */
int sb_state_build(sandbox_runner_t *r, const char *name, const sb_version_t *v, sb_slot_t *out,
                   int *limit);
/* Free s's state (arena, snapshot) and release its version; s stays. */
void sb_state_drop(sb_slot_t *s);
/* Move the state built in `from` into s (whose own state goes); from is
 * left with none. */
void sb_state_move(sb_slot_t *s, sb_slot_t *from);
/* Build and run, once, a tenant that calls the libc functions Lua reaches
 * from the safe libraries, so that their lazy symbols are bound before any
 * sandboxed call could be cut in the middle of binding one (see
 * sandbox_limit.c). A failure is reported on stderr unless quiet. */
void sb_state_warm_up(int quiet);

/* A lua_pcall, for sb_guard_call (on the runner's stack): sb_run_pcall(p)
 * runs lua_pcall(L, nargs, nres, 0) and leaves its status in st. */
typedef struct sb_pcall_args {
    lua_State *L;
    int nargs, nres, st;
} sb_pcall_args_t;
void sb_run_pcall(void *p);
/* Describe a failed call's error object (top of L's stack) in out, without
 * running anything (no __tostring). */
void sb_describe(lua_State *L, char *out, size_t cap);

/* -- sandbox_registry.c: what a runner asks of the registry -- */

/* Drop a reference to v (NULL: nothing); the last one frees it. */
void sb_version_release(sb_version_t *v);
/* The record of tenant name[0..n), NULL when the name is not valid or no
 * such tenant was ever seen. Records live until sandbox_shutdown. */
sb_tenant_t *sb_tenant_get(const char *name, size_t n);
/* A new slot s (t, counts set) joins s->t's runners: sandbox_stats counts
 * it, and a publisher delivers it its new versions. */
void sb_tenant_attach(sb_slot_t *s);
/* s leaves its tenant (its runner is freed): its counters go to the
 * tenant's retired ones, its job is cancelled. s's state and counts are
 * the caller's to free. */
void sb_tenant_detach(sb_slot_t *s);
/* The tenant has a new generation (s->gen differs from s->t->gen): nothing
 * is built here. Its publisher has given s a state (or a job building one)
 * already, or s takes the spare, or asks the loader for one; it serves its
 * previous version meanwhile. Sets s->gen and s->removed. */
void sb_slot_refresh(sb_slot_t *s);
/* s has a job: if it has ended, take its state (if it made one). */
void sb_slot_poll(sb_slot_t *s);
/* sandbox_wait for s: have w->ready(w) called once s's job has ended.
 * Returns 0, or -EALREADY when there is none or it has ended. */
int sb_slot_wait(sb_slot_t *s, sandbox_waiter_t *w);

#endif
