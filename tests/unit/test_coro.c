/* Unit tests of the coroutine runtime (core/coro.h): the switch keeps every
 * callee-saved register and a coroutine's locals; the scheduler wakes
 * coroutines in deadline order, on readiness, on a hang-up, on coro_wake,
 * and all at once on the stop; frames copied aside from the shared stack come back intact
 * among many coroutines of different depths; a waiting coroutine keeps
 * little more than its frames; an overflow faults in the guard page; and
 * what a switch costs against swapcontext(3).
 *
 * `unit-test_coro PATTERN` runs the tests whose name matches PATTERN (a
 * glob, cmocka's filter): `strace -c bin/tests/unit-test_coro
 * test_switch_cost` counts the system calls of the benchmark alone. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/coro.h"
#include "core/asan.h"
#include "core/timer.h"

#define STACK (64 << 10)

/* ---- the switch alone ---- */

static coro_ctx_t main_ctx, side_ctx;
static volatile long side_count;

static void side_main(void *arg)
{
    long n = (long)(intptr_t)arg;
    double f = 0.5; /* kept in a callee-saved register on aarch64 (d8-d15) */
    for (long i = 0; i < n; i++) {
        side_count++;
        f += 1.0;
        coro_ctx_switch(&side_ctx, &main_ctx);
    }
    side_count = f == 0.5 + (double)n ? -1 : -2; /* -1: f survived every switch */
    coro_ctx_switch(&side_ctx, &main_ctx);
    abort(); /* never resumed again */
}

/* Back and forth 1,000 times: both sides' locals survive, the side runs
 * exactly once per switch to it. */
static void test_switch_ping_pong(void **state)
{
    (void)state;
    coro_stack_t st;
    assert_int_equal(coro_stack_alloc(&st, STACK), 0);
    enum { N = 1000 };
    coro_ctx_make(&side_ctx, st.lo + st.size, side_main, (void *)(intptr_t)N);
    side_count = 0;
    long mine = 0;
    double g = 0.25;
    for (long i = 0; i < N; i++) {
        coro_ctx_switch(&main_ctx, &side_ctx);
        mine++;
        g += 2.0;
        assert_int_equal(side_count, i + 1);
    }
    coro_ctx_switch(&main_ctx, &side_ctx);
    assert_int_equal(side_count, -1);
    assert_int_equal(mine, N);
    assert_true(g == 0.25 + 2.0 * N);
    coro_stack_free(&st);
}

/* ---- the scheduler ---- */

static int order[16], n_order;

static void sleeper(void *arg)
{
    int ms = (int)(intptr_t)arg;
    int64_t start = time_now_ms();
    assert_int_equal(coro_sleep(start + ms), 0);
    assert_true(time_update() >= start + ms);
    order[n_order++] = ms;
}

/* Five coroutines sleeping 50, 10, 40, 20 and 30 ms wake in deadline order,
 * none early; the scheduler returns once they have ended. */
static void sleep_order(int own)
{
    static const int ms[5] = {50, 10, 40, 20, 30};
    n_order = 0;
    assert_int_equal(coro_sched_init(STACK, own, -1), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(coro_spawn(sleeper, (void *)(intptr_t)ms[i]), 0);
    assert_int_equal(coro_count(), 5);
    assert_int_equal(coro_sched_run(), 0);
    assert_int_equal(coro_count(), 0);
    assert_int_equal(n_order, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(order[i], 10 * (i + 1));
}

static void test_sleep_order_shared(void **state)
{
    (void)state;
    sleep_order(0);
}

static void test_sleep_order_own(void **state)
{
    (void)state;
    sleep_order(1);
}

static int sv[2];
static int got[8];

static void reader(void *arg)
{
    (void)arg;
    /* Nothing comes within 20 ms: the deadline. */
    got[0] = coro_wait(sv[0], CORO_READ, time_now_ms() + 20);
    /* Then the writer's byte. */
    got[1] = coro_wait(sv[0], CORO_READ, time_now_ms() + 5000);
    char c;
    got[2] = (int)read(sv[0], &c, 1) == 1 && c == 'x';
    /* Writable at once. */
    got[3] = coro_wait(sv[0], CORO_WRITE, 0);
    /* Waiting for nothing but a hang-up (a WAIT's sleep): the peer closes. */
    got[4] = coro_wait(sv[0], 0, time_now_ms() + 5000);
    /* Another descriptor: refused. */
    got[5] = coro_wait(sv[1] + 100, CORO_READ, 0);
    close(sv[0]);
}

static void writer(void *arg)
{
    (void)arg;
    assert_int_equal(coro_sleep(time_now_ms() + 40), 0);
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(coro_sleep(time_now_ms() + 40), 0);
    close(sv[1]);
}

/* Readiness, deadlines and a hang-up, on a socket pair. */
static void test_wait_fd(void **state)
{
    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    memset(got, 0x55, sizeof got);
    assert_int_equal(coro_sched_init(STACK, 0, -1), 0);
    assert_int_equal(coro_spawn(reader, NULL), 0);
    assert_int_equal(coro_spawn(writer, NULL), 0);
    assert_int_equal(coro_sched_run(), 0);
    assert_int_equal(got[0], 0);
    assert_true(got[1] & CORO_READ);
    assert_int_equal(got[2], 1);
    assert_int_equal(got[3], CORO_WRITE);
    assert_true(got[4] & CORO_ERROR);
    assert_int_equal(got[5], -EINVAL);
    assert_int_equal(coro_wait(0, CORO_READ, 0), -EPERM); /* not in a coroutine */
}

static void quitter(void *arg)
{
    (void)arg;
    /* Registers sv[0], times out, ends: sv[0] stays open. */
    got[0] = coro_wait(sv[0], CORO_READ, time_now_ms() + 10);
}

static void poker(void *arg)
{
    (void)arg;
    assert_int_equal(coro_sleep(time_now_ms() + 30), 0);
    assert_int_equal(write(sv[1], "x", 1), 1); /* sv[0] readable: nobody waits on it */
    assert_int_equal(coro_sleep(time_now_ms() + 30), 0);
}

/* A coroutine that ends with its descriptor still open (an acceptor at the
 * stop) takes it out of epoll: its readiness must not wake a freed
 * coroutine (AddressSanitizer's use after free) or spin the loop. */
static void test_end_drops_fd(void **state)
{
    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(coro_sched_init(STACK, 0, -1), 0);
    assert_int_equal(coro_spawn(quitter, NULL), 0);
    assert_int_equal(coro_spawn(poker, NULL), 0);
    assert_int_equal(coro_sched_run(), 0);
    assert_int_equal(got[0], 0);
    close(sv[0]);
    close(sv[1]);
}

static int stop_efd, woken[4];

static void stop_waiter(void *arg)
{
    int i = (int)(intptr_t)arg;
    /* No deadline: only the stop ends this wait. */
    woken[i] = coro_wait(-1, 0, 0);
    /* The stop wakes once: a wait after it runs to its deadline. */
    int64_t start = time_update();
    assert_int_equal(coro_sleep(start + 30), 0);
    assert_true(time_update() >= start + 30);
}

static void stopper(void *arg)
{
    (void)arg;
    assert_int_equal(coro_sleep(time_now_ms() + 20), 0);
    uint64_t one = 1;
    assert_int_equal(write(stop_efd, &one, sizeof one), sizeof one);
}

/* The stop descriptor wakes every waiting coroutine with -EINTR, once. */
static void test_stop_wakes_all(void **state)
{
    (void)state;
    stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(stop_efd >= 0);
    assert_int_equal(coro_sched_init(STACK, 0, stop_efd), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(coro_spawn(stop_waiter, (void *)(intptr_t)i), 0);
    assert_int_equal(coro_spawn(stopper, NULL), 0);
    assert_int_equal(coro_sched_run(), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(woken[i], -EINTR);
    close(stop_efd);
}

/* ---- coro_wake ---- */

static void *sleeper_self, *reader_self;
static int sleeper_got, reader_got, self_wake_got;
static int wake_pair[2];

static void wake_sleeper(void *arg)
{
    (void)arg;
    sleeper_self = coro_self();
    sleeper_got = coro_sleep(time_now_ms() + 10000);
}

static void wake_reader(void *arg)
{
    (void)arg;
    reader_self = coro_self();
    reader_got = coro_wait(wake_pair[0], CORO_READ, 0); /* nothing comes */
}

static void waker(void *arg)
{
    (void)arg;
    coro_wake(coro_self()); /* running: nothing to do */
    self_wake_got = coro_sleep(time_now_ms() + 1);
    coro_wake(sleeper_self);
    coro_wake(reader_self);
    coro_wake(reader_self); /* woken already: no second wake-up */
}

/* A wake ends a sleep and a wait on a descriptor at once, with CORO_WAKE; a
 * running coroutine's wake is lost (its next wait is a plain one). */
static void test_wake(void **state)
{
    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, wake_pair), 0);
    assert_int_equal(coro_sched_init(STACK, 0, -1), 0);
    assert_null(coro_self());
    assert_int_equal(coro_spawn(wake_sleeper, NULL), 0);
    assert_int_equal(coro_spawn(wake_reader, NULL), 0);
    assert_int_equal(coro_spawn(waker, NULL), 0);
    int64_t t0 = time_update();
    assert_int_equal(coro_sched_run(), 0);
    assert_true(time_update() - t0 < 5000);
    assert_int_equal(self_wake_got, 0); /* its deadline */
    assert_int_equal(sleeper_got, CORO_WAKE);
    assert_int_equal(reader_got, CORO_WAKE);
    close(wake_pair[0]);
    close(wake_pair[1]);
}

/* ---- frames kept across waits ---- */

enum { DEEP_COROS = 40, DEEP_ROUNDS = 6 };
static int deep_bad;

/* Recurse depth times, each frame with a local array filled with a pattern
 * of its own; wait at the bottom; check every frame's pattern on the way back. */
static void descend(int id, int depth, int round)
{
    volatile unsigned char local[200];
    for (size_t i = 0; i < sizeof local; i++)
        local[i] = (unsigned char)(id * 31 + depth * 7 + round + i);
    if (depth > 0)
        descend(id, depth - 1, round);
    else if (coro_sleep(time_now_ms() + 1 + (id * 7 + round) % 5) != 0)
        deep_bad++;
    for (size_t i = 0; i < sizeof local; i++)
        if (local[i] != (unsigned char)(id * 31 + depth * 7 + round + i))
            deep_bad++;
}

static void deep_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int round = 0; round < DEEP_ROUNDS; round++)
        descend(id, (id * 5 + round * 3) % 23, round); /* depths 0 to 22: up to ~6 KB */
}

/* Forty coroutines at different depths, waking in a shuffled order, six
 * rounds each: on the shared stack every switch puts one's frames aside and
 * brings another's back; not one byte of any frame may change. */
static void frames_kept(int own)
{
    deep_bad = 0;
    assert_int_equal(coro_sched_init(STACK, own, -1), 0);
    for (int i = 0; i < DEEP_COROS; i++)
        assert_int_equal(coro_spawn(deep_main, (void *)(intptr_t)i), 0);
    assert_int_equal(coro_sched_run(), 0);
    assert_int_equal(deep_bad, 0);
}

static void test_frames_kept_shared(void **state)
{
    (void)state;
    frames_kept(0);
}

static void test_frames_kept_own(void **state)
{
    (void)state;
    frames_kept(1);
}

/* ---- what a waiting coroutine keeps ---- */

#define IDLE_COROS 1000

static size_t idle_heap; /* heap in use while every idler waits */

static void idler(void *arg)
{
    (void)arg;
    /* Until the stop (-EINTR). */
    (void)coro_sleep(0);
}

static void heap_meter(void *arg)
{
    int stop = (int)(intptr_t)arg;
    /* Spawned last, it runs after every idler has started waiting (the ready
     * queue is first in, first out). */
    idle_heap = mallinfo2().uordblks;
    assert_int_equal(eventfd_write(stop, 1), 0);
}

/* On the shared stack a waiting coroutine keeps its record and its frames,
 * nothing more: what an idle connection of the coro design costs beyond
 * its session. An idler's frames are its function's return address and the
 * scheduler's own (coro_wait's, the switch's registers): 224 bytes at most
 * all told, with malloc's headers and the deadline heap's slot. */
static void test_waiting_footprint(void **state)
{
    (void)state;
#ifdef CORE_ASAN
    skip(); /* the sanitizer's allocator: mallinfo2 does not see it */
#endif
#ifndef __OPTIMIZE__
    skip(); /* unoptimized frames (-O0) are several times larger */
#endif
    int stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(stop >= 0);
    assert_int_equal(coro_sched_init(STACK, 0, stop), 0);
    size_t before = mallinfo2().uordblks;
    for (int i = 0; i < IDLE_COROS; i++)
        assert_int_equal(coro_spawn(idler, NULL), 0);
    assert_int_equal(coro_spawn(heap_meter, (void *)(intptr_t)stop), 0);
    assert_int_equal(coro_sched_run(), 0);
    close(stop);
    double per = (double)(idle_heap - before) / IDLE_COROS;
    print_message("a waiting coroutine keeps %.0f bytes of heap\n", per);
    assert_true(per > 64);
    assert_true(per <= 224);
}

/* ---- the guard page ---- */

static char *guard_lo, *guard_hi; /* the low-level test's guard, else NULL */

/* The faulting address is in an inaccessible mapping (the guard), read from
 * /proc/self/maps with plain system calls (in a signal handler). */
static int in_guard(uintptr_t a)
{
    if (guard_lo)
        return a >= (uintptr_t)guard_lo && a < (uintptr_t)guard_hi;
    static char buf[1 << 16];
    int fd = open("/proc/self/maps", O_RDONLY);
    ssize_t n = 0, r;
    while (fd >= 0 && n < (ssize_t)sizeof buf - 1 &&
           (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0)
        n += r;
    if (fd >= 0)
        close(fd);
    buf[n < 0 ? 0 : n] = '\0';
    for (char *line = buf; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : "") {
        uintptr_t lo, hi;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 && a >= lo && a < hi)
            return strcmp(perms, "---p") == 0;
    }
    return 0;
}

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)ctx;
    _exit(in_guard((uintptr_t)si->si_addr) ? 42 : 43);
}

static volatile long recurse_max = 1L << 40; /* never reached: the guard is */

static long recurse(long n)
{
    volatile char pad[256];
    pad[0] = (char)n;
    if (n >= recurse_max)
        return 0;
    return recurse(n + 1) + pad[0]; /* not a tail call */
}

static void overflow_main(void *arg)
{
    (void)arg;
    recurse(0);
}

/* In a child: overflow the stack of a coroutine (mode 0: shared, 1: own) or
 * of a bare context (2). It must die in the guard page: exit 42 from the
 * SIGSEGV handler (on its own stack), not run on or corrupt anything. */
static void overflow(int mode)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static char alt[1 << 16];
        stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt};
        struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_ONSTACK};
        sigaltstack(&ss, NULL);
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, NULL);
        if (mode == 2) {
            coro_stack_t st;
            if (coro_stack_alloc(&st, STACK) < 0)
                _exit(44);
            guard_lo = st.map;
            guard_hi = st.lo;
            coro_ctx_t c;
            coro_ctx_make(&c, st.lo + st.size, overflow_main, NULL);
            coro_ctx_switch(&main_ctx, &c);
        } else if (coro_sched_init(STACK, mode, -1) == 0 && coro_spawn(overflow_main, NULL) == 0) {
            coro_sched_run();
        }
        _exit(45); /* the recursion came back: no fault */
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 42)
        fail_msg("mode %d: want exit 42 (a fault in the guard page), got status %#x", mode, st);
}

static void test_overflow_faults(void **state)
{
    (void)state;
#ifdef CORE_ASAN
    /* AddressSanitizer reports the overflow itself (its own handler). */
    skip();
#endif
    for (int mode = 0; mode < 3; mode++)
        overflow(mode);
}

/* ---- what a switch costs ---- */

static ucontext_t uc_main, uc_side;

static void uc_side_main(void)
{
    for (;;)
        swapcontext(&uc_side, &uc_main);
}

static void bench_side(void *arg)
{
    (void)arg;
    for (;;)
        coro_ctx_switch(&side_ctx, &main_ctx);
}

/* Nanoseconds per switch (a round trip is two), the best of five runs. */
static double per_switch_ns(int uc, long n)
{
    double best = 1e18;
    for (int run = 0; run < 5; run++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++) {
            if (uc)
                swapcontext(&uc_main, &uc_side);
            else
                coro_ctx_switch(&main_ctx, &side_ctx);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ns =
            ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (2.0 * n);
        if (ns < best)
            best = ns;
    }
    return best;
}

/* coro_ctx_switch against swapcontext, back and forth between two stacks:
 * swapcontext sets the signal mask with a system call at every switch
 * (strace -c shows two rt_sigprocmask per round trip); ours makes none and
 * must be at least 3 times cheaper (about 50 here). */
static void test_switch_cost(void **state)
{
    (void)state;
#ifdef CORE_ASAN
    skip(); /* timing the sanitizer, and its interceptor of swapcontext */
#endif
    enum { N = 200000 };
    coro_stack_t a, b;
    assert_int_equal(coro_stack_alloc(&a, STACK), 0);
    assert_int_equal(coro_stack_alloc(&b, STACK), 0);
    coro_ctx_make(&side_ctx, a.lo + a.size, bench_side, NULL);
    assert_int_equal(getcontext(&uc_side), 0);
    uc_side.uc_stack.ss_sp = b.lo;
    uc_side.uc_stack.ss_size = b.size;
    uc_side.uc_link = NULL;
    makecontext(&uc_side, uc_side_main, 0);
    double ours = per_switch_ns(0, N), theirs = per_switch_ns(1, N);
    print_message("switch: coro_ctx_switch %.1f ns, swapcontext %.1f ns (%.0fx)\n", ours, theirs,
                  theirs / ours);
    coro_stack_free(&a);
    coro_stack_free(&b);
    assert_true(ours * 3 < theirs);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_switch_ping_pong),
        cmocka_unit_test(test_sleep_order_shared),
        cmocka_unit_test(test_sleep_order_own),
        cmocka_unit_test(test_wait_fd),
        cmocka_unit_test(test_end_drops_fd),
        cmocka_unit_test(test_stop_wakes_all),
        cmocka_unit_test(test_wake),
        cmocka_unit_test(test_frames_kept_shared),
        cmocka_unit_test(test_frames_kept_own),
        cmocka_unit_test(test_waiting_footprint),
        cmocka_unit_test(test_overflow_faults),
        cmocka_unit_test(test_switch_cost),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("coro", tests, NULL, NULL);
}
