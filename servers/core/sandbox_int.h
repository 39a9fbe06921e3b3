/* sandbox_int: what the sandbox's files share (sandbox.c, sandbox_arena.c,
 * sandbox_limit.c). Not an API: servers use sandbox.h. */
#ifndef CORE_SANDBOX_INT_H
#define CORE_SANDBOX_INT_H

#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <lua.h>

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
    size_t len;         /* bytes below the bump pointer when taken */
    size_t npages;      /* pages copied: [0, npages * 4096) */
    uint8_t *hot;       /* per page: written since the snapshot (else read-only) */
    sb_run_t runs[SB_MAX_RUNS]; /* runs of hot pages, as of the last restore */
    size_t nruns;
    int changed;        /* pages became hot since */
    long runs_now;      /* runs of hot pages, kept by the fault handler */
    long maps;          /* mappings its protection adds to the process (charged) */
    int armed;          /* the pages that are not hot are read-only */
    int full;           /* no protection: every restore copies every page */
    size_t copied;      /* bytes the last restore copied back */
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
    lua_State *L;          /* the state being run (NULL while it is being made) */
    lua_State *cur;        /* the thread of L running now: L or a coroutine */
    int in_call;           /* between sb_guard_enter and sb_guard_leave */
    uint64_t seq;          /* calls so far: tells a stale signal from a fresh one */
    int64_t deadline;      /* sb_ticks: the hook from here */
    int64_t grace;         /* ... and the jump from deadline + grace */
    uint64_t kill_seq;     /* written by the watchdog before it signals */
    int kill_stage;        /* 1: set the hook, 2: jump */
    volatile sig_atomic_t hit; /* the deadline passed during this call */
    char *stack_map;       /* the stack's mapping: the guard, then the stack */
    char *stack_lo;        /* the stack is [stack_lo, stack_lo + SB_STACK_SIZE) */
    unsigned stack_id;     /* valgrind's id of the stack */
    void (*fn)(void *);    /* the function sb_guard_call runs there, and its argument */
    void *arg;
    void *asan_fake;       /* AddressSanitizer's account of the switches (its builds only) */
    const void *asan_bottom;
    size_t asan_size;
    int asan_on;           /* ... it was told the sandbox's stack is the one in use */
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
 * when the deadline has passed already. (sandbox.c's coroutine functions.) */
void sb_guard_running(lua_State *co);

/* The hook raising "time limit exceeded". */
void sb_timeout_hook(lua_State *L, lua_Debug *ar);

#endif
