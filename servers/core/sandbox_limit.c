/* sandbox_limit: the time limit of sandboxed calls.
 *
 * A count hook can't interrupt a C function (string.find with a nasty
 * pattern, string.rep, table.concat), and Lua turns hooks off inside
 * finalizers. So a watchdog thread looks at every runner now and then (a
 * quarter of the shortest limit, at most 10 ms apart) and, when a call is
 * past its deadline, signals that runner's thread (tgkill):
 *   stage 1, at the deadline: the handler sets a count hook on the state,
 *     which raises "time limit exceeded" at every Lua instruction from then
 *     on (so a pcall that catches it gets it again at once);
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
 * sb_guard_jumped. */
#include "sandbox_int.h"

#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <lauxlib.h>

#define LOOK_MAX_NS 10000000L /* the watchdog looks at least every 10 ms */
#define LOOK_MIN_NS 250000L   /* ... and at most every 0.25 ms */

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

static void on_signal(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)si;
    sb_guard_t *g = self;
    int saved = errno;
    if (!g || !__atomic_load_n(&g->in_call, __ATOMIC_RELAXED) ||
        __atomic_load_n(&g->kill_seq, __ATOMIC_ACQUIRE) != __atomic_load_n(&g->seq, __ATOMIC_RELAXED))
        goto out; /* a stale signal: that call is over */
    g->hit = 1;
    if (__atomic_load_n(&g->kill_stage, __ATOMIC_RELAXED) >= 2 && !in_ldso(ctx))
        siglongjmp(g->jb, 1);
    if (g->L)
        lua_sethook(g->L, sb_timeout_hook, LUA_MASKCOUNT, 1); /* signal-safe by design */
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
    struct sigaction sa = {.sa_sigaction = on_signal, .sa_flags = SA_SIGINFO | SA_RESTART};
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

void sb_guard_register(sb_guard_t *g)
{
    g->tid = (pid_t)syscall(SYS_gettid);
    g->prev_self = self;
    self = g;
    pthread_mutex_lock(&wd.lock);
    g->next = wd.list;
    wd.list = g;
    pthread_mutex_unlock(&wd.lock);
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
}

void sb_guard_arm(sb_guard_t *g, lua_State *L, int64_t start, int ms)
{
    int64_t limit = (int64_t)ms * sb_ticks_per_ms;
    g->L = L;
    g->hit = 0;
    __atomic_store_n(&g->grace, limit / 2, __ATOMIC_RELAXED);
    __atomic_store_n(&g->deadline, start + limit, __ATOMIC_RELAXED);
    __atomic_store_n(&g->seq, g->seq + 1, __ATOMIC_RELEASE);
}

void sb_guard_jumped(sb_guard_t *g)
{
    sigset_t set;
    sb_guard_leave(g);
    g->hit = 1;
    sigemptyset(&set);
    sigaddset(&set, SB_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}
