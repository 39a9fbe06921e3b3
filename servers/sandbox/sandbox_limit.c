/* sandbox_limit: the time limit of sandboxed calls.
 *
 * A count hook can't interrupt a C function (string.find with a nasty
 * pattern, string.rep, table.concat), and Lua turns hooks off inside
 * finalizers. So a watchdog thread looks at every runner now and then (a
 * quarter of the shortest limit, at most 10 ms apart) and, when a call is
 * past its deadline, signals that runner's thread (tgkill):
 *   stage 1, at the deadline: the handler sets a count hook on the Lua
 *     thread running (the main one or a coroutine: sandbox_state.c's resume,
 *     wrap and close say which, sb_guard_running), which raises "time limit
 *     exceeded" at every Lua instruction from then on (so a pcall that
 *     catches it gets it again at once); a thread that runs again after the
 *     deadline (a resumer, when its coroutine ends) is hooked then;
 *   stage 2, at the deadline plus half the limit: the call is still running,
 *     so the handler siglongjmps back to the runner, out of whatever it was
 *     doing. Repeated every look until it lands.
 *
 * Why the jump is safe. Everything the call could have left half-done is
 * thrown away: before the next call, the runner puts back every page of the
 * arena the call wrote (sandbox_arena.c tracks them; every byte of the Lua
 * state, its stacks and its allocator live there), and the C frames skipped
 * belong to Lua and to the runner. What
 * remains is the process outside the arena, which a sandboxed call reaches
 * only through the libc functions Lua calls: string and memory functions,
 * math, snprintf into a caller's buffer (glibc's vsnprintf uses no FILE
 * lock), strtod, localeconv, time. None takes a lock or allocates for the
 * inputs Lua gives them (format items are bounded to 99 digits of width and
 * precision); the sandbox never uses Lua's default allocator, so malloc is
 * not reachable, and the libraries that could (io, os, package) are not
 * loaded. The one exception is the dynamic linker resolving a lazy symbol on
 * its first call (liblua is not linked with -z now): it may hold its lock,
 * so the handler does not jump when the interrupted instruction is inside
 * ld.so (the next look retries), and sandbox_init warms those symbols up.
 * The jump leaves the signal blocked (the handler did not return), hence
 * sb_guard_jumped.
 *
 * The stack. Lua bounds nested C calls (200 levels), but not on every path:
 * in 5.4.4 coroutine.close runs the __close handlers on the coroutine's own
 * count, so closes nested from handlers grow the C stack without bound, and
 * the overflow killed the process. So no guarded call runs on the thread's
 * stack: each runs on a stack of its own (SB_STACK_SIZE, mapped once per
 * runner) with SB_STACK_GUARD bytes of PROT_NONE below it. Whatever the
 * path, the overflow faults on the guard, and the SIGSEGV handler (the one
 * of sandbox_arena.c, which asks sb_guard_fault) jumps out as the time
 * limit does, with the same argument for why that is safe: every C frame
 * skipped belongs to Lua or the runner, and the state is thrown away. The
 * handlers run on an alternate signal stack (sigaltstack, per thread: the
 * full stack can't take a signal frame). The switch is a few instructions
 * (sb_stack_switch: no system call) on x86-64 and arm64; elsewhere it is
 * swapcontext's. */
#include "sandbox_int.h"

#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <lauxlib.h>

/* AddressSanitizer must be told of every switch of stacks (its fiber
 * interface), or it takes the sandbox's stack for the thread's and leaves
 * stale redzones there after a longjmp. */
#include "core/asan.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h> /* the stacks are told to valgrind (no cost outside it) */
#define HAVE_VALGRIND 1
#endif
#endif

#define LOOK_MAX_NS 10000000L  /* the watchdog looks at least every 10 ms */
#define LOOK_MIN_NS 250000L    /* ... and at most every 0.25 ms */
#define ALT_SIZE    (64 << 10) /* alternate signal stack, beyond the system's minimum */

static struct {
    pthread_mutex_t lock; /* guards the list */
    sb_guard_t *list;
    pthread_t thread;
    int running, stop;
    int64_t look_ns;
    uintptr_t ldso_lo, ldso_hi; /* executable range of the dynamic linker */
} wd = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, 0, LOOK_MAX_NS, 0, 0};

static __thread sb_guard_t *self;

int sb_use_tsc;
int64_t sb_ticks_per_ms = 1000000;

/* Use the TSC if the CPU says it is invariant (constant rate, runs in
 * every state), with its rate measured against CLOCK_MONOTONIC. */
static void pick_clock(void)
{
#if defined(__x86_64__)
    unsigned a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000000u), "c"(0));
    if (a < 0x80000007u)
        return;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000007u), "c"(0));
    if (!(d & (1u << 8)))
        return;
    int64_t n0 = sb_now_ns(), t0 = (int64_t)__builtin_ia32_rdtsc();
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL);
    int64_t n1 = sb_now_ns(), t1 = (int64_t)__builtin_ia32_rdtsc();
    if (n1 <= n0 || t1 <= t0)
        return;
    sb_ticks_per_ms = (int64_t)((double)(t1 - t0) * 1e6 / (double)(n1 - n0));
    if (sb_ticks_per_ms > 0)
        sb_use_tsc = 1;
    else
        sb_ticks_per_ms = 1000000;
#endif
}

int64_t sb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t sb_thread_cpu_ticks(void)
{
    struct timespec ts;
    /* Cannot fail for the calling thread's own clock. */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    double ns = (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
    return (int64_t)(ns * (double)sb_ticks_per_ms / 1e6);
}

void sb_timeout_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_pushliteral(L, "time limit exceeded");
    lua_error(L);
}

static int in_ldso(void *ctx)
{
#if defined(__x86_64__)
    uintptr_t pc = (uintptr_t)((ucontext_t *)ctx)->uc_mcontext.gregs[REG_RIP];
    return pc >= wd.ldso_lo && pc < wd.ldso_hi;
#else
    (void)ctx;
    return 0;
#endif
}

/* Out of g's call, from a handler (on the alternate stack): back to its
 * sigsetjmp, with cut (SB_CUT_*). */
static void __attribute__((noreturn)) cut_call(sb_guard_t *g, int cut)
{
#ifdef CORE_ASAN
    /* Back to the thread's stack: the frames on the sandbox's are gone. */
    if (g->asan_on)
        __sanitizer_start_switch_fiber(NULL, g->asan_bottom, g->asan_size);
#endif
    siglongjmp(g->jb, cut);
}

static void on_signal(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)si;
    sb_guard_t *g = self;
    int saved = errno;
    if (!g || !__atomic_load_n(&g->in_call, __ATOMIC_RELAXED) ||
        __atomic_load_n(&g->kill_seq, __ATOMIC_ACQUIRE) !=
            __atomic_load_n(&g->seq, __ATOMIC_RELAXED))
        goto out; /* a stale signal: that call is over */
    g->hit = 1;
    if (__atomic_load_n(&g->kill_stage, __ATOMIC_RELAXED) >= 2 && !in_ldso(ctx))
        cut_call(g, SB_CUT_TIME);
    /* lua_sethook is signal-safe by design. A hook is per Lua thread: the
     * one running gets it (and the main one, for when it runs again). */
    lua_State *cur = __atomic_load_n(&g->cur, __ATOMIC_RELAXED);
    if (cur)
        lua_sethook(cur, sb_timeout_hook, LUA_MASKCOUNT, 1);
    if (g->L && g->L != cur)
        lua_sethook(g->L, sb_timeout_hook, LUA_MASKCOUNT, 1);
out:
    errno = saved;
}

static void look(void)
{
    int64_t now = sb_ticks();
    pid_t pid = getpid();
    pthread_mutex_lock(&wd.lock);
    for (sb_guard_t *g = wd.list; g; g = g->next) {
        if (!__atomic_load_n(&g->in_call, __ATOMIC_ACQUIRE))
            continue;
        /* seq before deadline: the runner writes them the other way round. */
        uint64_t seq = __atomic_load_n(&g->seq, __ATOMIC_ACQUIRE);
        int64_t dl = __atomic_load_n(&g->deadline, __ATOMIC_RELAXED);
        if (now < dl)
            continue;
        int stage = now >= dl + __atomic_load_n(&g->grace, __ATOMIC_RELAXED) ? 2 : 1;
        if (g->kill_seq == seq && g->kill_stage == stage && stage == 1)
            continue; /* the hook is set already */
        __atomic_store_n(&g->kill_stage, stage, __ATOMIC_RELAXED);
        __atomic_store_n(&g->kill_seq, seq, __ATOMIC_RELEASE);
        syscall(SYS_tgkill, pid, g->tid, SB_SIGNAL);
    }
    pthread_mutex_unlock(&wd.lock);
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    for (;;) {
        int64_t ns = __atomic_load_n(&wd.look_ns, __ATOMIC_RELAXED);
        struct timespec ts = {ns / 1000000000, ns % 1000000000};
        nanosleep(&ts, NULL);
        if (__atomic_load_n(&wd.stop, __ATOMIC_ACQUIRE))
            return NULL;
        look();
    }
}

static int find_ldso(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    (void)arg;
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    if (!strstr(name, "/ld-linux") && !strstr(name, "/ld64") && !strstr(name, "/ld-"))
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (!wd.ldso_lo || lo < wd.ldso_lo)
            wd.ldso_lo = lo;
        if (hi > wd.ldso_hi)
            wd.ldso_hi = hi;
    }
    return 0;
}

int sb_limit_init(void)
{
    if (wd.running)
        return 0;
    pick_clock();
    dl_iterate_phdr(find_ldso, NULL);
    /* On the alternate stack: the signal may come when the sandbox's stack
     * is nearly full. */
    struct sigaction sa = {.sa_sigaction = on_signal,
                           .sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SB_SIGNAL, &sa, NULL) < 0)
        return -errno;
    wd.stop = 0;
    int rc = pthread_create(&wd.thread, NULL, watchdog_main, NULL);
    if (rc)
        return -rc;
    wd.running = 1;
    return 0;
}

void sb_limit_shutdown(void)
{
    if (!wd.running)
        return;
    __atomic_store_n(&wd.stop, 1, __ATOMIC_RELEASE);
    pthread_join(wd.thread, NULL);
    wd.running = 0;
}

void sb_limit_shortest(int ms)
{
    int64_t ns = (int64_t)ms * 1000000 / 4;
    if (ns > LOOK_MAX_NS)
        ns = LOOK_MAX_NS;
    if (ns < LOOK_MIN_NS)
        ns = LOOK_MIN_NS;
    __atomic_store_n(&wd.look_ns, ns, __ATOMIC_RELAXED);
}

/* ---- the stack ---- */

/* The thread's alternate signal stack, when it is ours: made by its first
 * guard, removed with its last. */
static __thread struct {
    char *map;
    size_t len;
    int users;
} alt;

static int alt_take(void)
{
    stack_t now, ss = {0};
    if (alt.users++ > 0)
        return 0;
    if (sigaltstack(NULL, &now) == 0 && !(now.ss_flags & SS_DISABLE))
        return 0; /* the thread has one already (a sanitizer's): it serves */
    size_t page = (size_t)sysconf(_SC_PAGESIZE), len = ALT_SIZE;
#ifdef _SC_MINSIGSTKSZ
    long min = sysconf(_SC_MINSIGSTKSZ); /* a signal frame's size depends on the CPU */
    if (min > 0)
        len += (size_t)min;
#else
    len += SIGSTKSZ;
#endif
    len = (len + page - 1) / page * page;
    /* A guard page below it too: a handler that overflowed it would
     * otherwise write over whatever is mapped there. */
    char *p = mmap(NULL, page + len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED)
        goto err;
    if (mprotect(p, page, PROT_NONE) < 0)
        goto err;
    ss.ss_sp = p + page;
    ss.ss_size = len;
    if (sigaltstack(&ss, NULL) < 0)
        goto err;
    alt.map = p;
    alt.len = page + len;
    return 0;
err:;
    int e = errno;
    if (p != MAP_FAILED)
        munmap(p, page + len);
    alt.users--;
    return -e;
}

static void alt_drop(void)
{
    stack_t ss = {.ss_flags = SS_DISABLE};
    if (--alt.users > 0 || !alt.map)
        return;
    if (sigaltstack(&ss, NULL) < 0)
        return; /* only fails on it, in a handler: never here; keep it mapped */
    munmap(alt.map, alt.len);
    alt.map = NULL;
}

static int stack_new(sb_guard_t *g)
{
    size_t len = SB_STACK_GUARD + SB_STACK_SIZE;
    /* MAP_NORESERVE: the pages a call touches are all it costs. */
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    if (mprotect(p, SB_STACK_GUARD, PROT_NONE) < 0) {
        int e = errno;
        munmap(p, len);
        return -e;
    }
    g->stack_map = p;
    g->stack_lo = p + SB_STACK_GUARD;
#ifdef HAVE_VALGRIND
    g->stack_id = VALGRIND_STACK_REGISTER(g->stack_lo, g->stack_lo + SB_STACK_SIZE - 1);
#endif
    return 0;
}

static void stack_free(sb_guard_t *g)
{
    if (!g->stack_map)
        return;
#ifdef HAVE_VALGRIND
    VALGRIND_STACK_DEREGISTER(g->stack_id);
#endif
    munmap(g->stack_map, SB_STACK_GUARD + SB_STACK_SIZE);
    g->stack_map = g->stack_lo = NULL;
}

#if defined(CORE_ASAN) || !(defined(__x86_64__) || defined(__aarch64__))
/* On g's stack: g->fn(g->arg), with ASan told (or from swapcontext). */
static void on_stack(void *p)
{
    sb_guard_t *g = p;
#ifdef CORE_ASAN
    __sanitizer_finish_switch_fiber(NULL, &g->asan_bottom, &g->asan_size);
    g->asan_on = 1;
#endif
    g->fn(g->arg);
#ifdef CORE_ASAN
    g->asan_on = 0;
    __sanitizer_start_switch_fiber(NULL, g->asan_bottom, g->asan_size);
#endif
}
#endif

#if defined(__x86_64__) || defined(__aarch64__)
/* sb_stack_switch(top, fn, arg): fn(arg) with the stack pointer at top (16-
 * byte aligned), then back. The frame pointer keeps the way back, so
 * debuggers and unwinders walk from the sandbox's stack to the thread's. */
void sb_stack_switch(char *top, void (*fn)(void *), void *arg)
    __attribute__((visibility("hidden")));
#if defined(__x86_64__)
__asm__(".text\n"
        ".globl sb_stack_switch\n"
        ".hidden sb_stack_switch\n"
        ".type sb_stack_switch, @function\n"
        ".p2align 4\n"
        "sb_stack_switch:\n"
        ".cfi_startproc\n"
        "    pushq %rbp\n"
        ".cfi_def_cfa_offset 16\n"
        ".cfi_offset %rbp, -16\n"
        "    movq %rsp, %rbp\n"
        ".cfi_def_cfa_register %rbp\n"
        "    movq %rdi, %rsp\n"
        "    movq %rdx, %rdi\n"
        "    callq *%rsi\n"
        "    movq %rbp, %rsp\n"
        "    popq %rbp\n"
        ".cfi_def_cfa %rsp, 8\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size sb_stack_switch, .-sb_stack_switch\n");
#else
__asm__(".text\n"
        ".globl sb_stack_switch\n"
        ".hidden sb_stack_switch\n"
        ".type sb_stack_switch, %function\n"
        ".p2align 4\n"
        "sb_stack_switch:\n"
        ".cfi_startproc\n"
        "    stp x29, x30, [sp, #-16]!\n"
        ".cfi_def_cfa_offset 16\n"
        ".cfi_offset x29, -16\n"
        ".cfi_offset x30, -8\n"
        "    mov x29, sp\n"
        ".cfi_def_cfa_register x29\n"
        "    mov sp, x0\n"
        "    mov x0, x2\n"
        "    blr x1\n"
        "    mov sp, x29\n"
        ".cfi_def_cfa sp, 16\n"
        "    ldp x29, x30, [sp], #16\n"
        ".cfi_def_cfa_offset 0\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size sb_stack_switch, .-sb_stack_switch\n");
#endif

void sb_guard_call(sb_guard_t *g, void (*fn)(void *), void *arg)
{
#ifdef CORE_ASAN
    g->fn = fn;
    g->arg = arg;
    __sanitizer_start_switch_fiber(&g->asan_fake, g->stack_lo, SB_STACK_SIZE);
    sb_stack_switch(g->stack_lo + SB_STACK_SIZE, on_stack, g);
    __sanitizer_finish_switch_fiber(g->asan_fake, NULL, NULL);
#else
    sb_stack_switch(g->stack_lo + SB_STACK_SIZE, fn, arg);
#endif
}
#else
/* Elsewhere: swapcontext (it also sets the signal mask: two system calls). */
static __thread struct {
    ucontext_t back, run;
    sb_guard_t *g;
} uc;

static void uc_main(void)
{
    on_stack(uc.g);
}

void sb_guard_call(sb_guard_t *g, void (*fn)(void *), void *arg)
{
    g->fn = fn;
    g->arg = arg;
    uc.g = g;
    if (getcontext(&uc.run) < 0) {
        fn(arg); /* never fails on Linux; on the thread's stack then */
        return;
    }
    uc.run.uc_stack.ss_sp = g->stack_lo;
    uc.run.uc_stack.ss_size = SB_STACK_SIZE;
    uc.run.uc_link = &uc.back;
    makecontext(&uc.run, uc_main, 0);
#ifdef CORE_ASAN
    __sanitizer_start_switch_fiber(&g->asan_fake, g->stack_lo, SB_STACK_SIZE);
#endif
    swapcontext(&uc.back, &uc.run);
#ifdef CORE_ASAN
    __sanitizer_finish_switch_fiber(g->asan_fake, NULL, NULL);
#endif
}
#endif

void sb_guard_fault(void *addr)
{
    sb_guard_t *g = self;
    uintptr_t at = (uintptr_t)addr;
    if (!g || !__atomic_load_n(&g->in_call, __ATOMIC_RELAXED) || at < (uintptr_t)g->stack_map ||
        at >= (uintptr_t)g->stack_lo)
        return;
    /* Unlike the time limit's, this jump can't wait for the next look:
     * the faulting instruction can't go on. So it is taken even inside the
     * dynamic linker (a lazy binding on the full stack, which the warm-up
     * makes unlikely): at worst that leaves its scope flag set, which only
     * a dlclose would wait for. */
    cut_call(g, SB_CUT_STACK);
}

void sb_guard_running(lua_State *co)
{
    sb_guard_t *g = self;
    if (!g)
        return;
    /* cur first: a signal from here on hooks co, one before it hooked the
     * thread that was running and set hit, which is looked at next. */
    __atomic_store_n(&g->cur, co, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (g->hit && __atomic_load_n(&g->in_call, __ATOMIC_RELAXED))
        lua_sethook(co, sb_timeout_hook, LUA_MASKCOUNT, 1);
}

/* ---- guards ---- */

int sb_guard_register(sb_guard_t *g)
{
    int rc = stack_new(g);
    if (rc < 0)
        return rc;
    if ((rc = alt_take()) < 0) {
        stack_free(g);
        return rc;
    }
    g->tid = (pid_t)syscall(SYS_gettid);
    g->prev_self = self;
    self = g;
    pthread_mutex_lock(&wd.lock);
    g->next = wd.list;
    wd.list = g;
    pthread_mutex_unlock(&wd.lock);
    return 0;
}

void sb_guard_unregister(sb_guard_t *g)
{
    pthread_mutex_lock(&wd.lock);
    for (sb_guard_t **p = &wd.list; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            break;
        }
    pthread_mutex_unlock(&wd.lock);
    if (self == g)
        self = g->prev_self;
    stack_free(g);
    alt_drop();
}

void sb_guard_arm(sb_guard_t *g, lua_State *L, int64_t start, int ms)
{
    int64_t limit = (int64_t)ms * sb_ticks_per_ms;
    g->L = L;
    g->cur = L;
    g->hit = 0;
    __atomic_store_n(&g->grace, limit / 2, __ATOMIC_RELAXED);
    __atomic_store_n(&g->deadline, start + limit, __ATOMIC_RELAXED);
    __atomic_store_n(&g->seq, g->seq + 1, __ATOMIC_RELEASE);
}

void sb_guard_jumped(sb_guard_t *g)
{
    sigset_t set;
    sb_guard_leave(g);
#ifdef CORE_ASAN
    if (g->asan_on) /* cut on the sandbox's stack, not before the switch */
        __sanitizer_finish_switch_fiber(g->asan_fake, NULL, NULL);
    g->asan_on = 0;
    /* The redzones of the instrumented frames the jump skipped. */
    __asan_unpoison_memory_region(g->stack_lo, SB_STACK_SIZE);
#endif
    sigemptyset(&set);
    sigaddset(&set, SB_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}
