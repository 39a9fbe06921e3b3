/* Unit tests of the sandbox's snapshots (servers/sandbox/sandbox_arena.c): a
 * restore puts back exactly the bytes of the snapshot whatever was written,
 * it copies back only the pages written since the snapshot (until most are,
 * or they are scattered), writes from signal handlers count too, and a fault
 * that is not a write to the running arena's protected page goes where it
 * went before: the default action, or the handler the sandbox replaced. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "sandbox/sandbox_int.h"

#define PAGE   4096
#define NPAGES 24

/* An arena whose used bytes span `pages` pages of known, varied content. */
static sb_arena_t *filled_arena(size_t pages)
{
    sb_arena_t *a = sb_arena_new(4 << 20, 4 << 20);
    assert_non_null(a);
    unsigned x = 12345;
    while (sb_arena_used(a) < (pages - 1) * PAGE + 100) {
        unsigned char *p = sb_arena_alloc(a, NULL, 0, 200);
        assert_non_null(p);
        for (int i = 0; i < 200; i++)
            p[i] = (unsigned char)(x = x * 1103515245u + 12345u) >> 16;
    }
    return a;
}

static void assert_restored(sb_arena_t *a, const sb_snap_t *s)
{
    assert_int_equal(memcmp(a, s->copy, s->npages * PAGE), 0);
}

/* The claims above, from the point of view of each page. */
static void test_copies_written_pages(void **state)
{
    (void)state;
    assert_int_equal(sb_snap_claim(), 0); /* cmocka replaced the handler */
    sb_arena_t *a = filled_arena(NPAGES);
    sb_snap_t s;
    assert_int_equal(sb_snap_take(a, &s), 0);
    assert_int_equal(s.npages, NPAGES);
    char *b = (char *)a;

    sb_snap_restore(a, &s); /* the first one copies all and protects */
    assert_int_equal(s.copied, NPAGES * PAGE);
    sb_snap_restore(a, &s); /* nothing written: nothing to copy */
    assert_int_equal(s.copied, 0);

    b[7 * PAGE + 100] ^= 1; /* faults, and page 7 is hot from now on */
    sb_snap_restore(a, &s);
    assert_int_equal(s.copied, PAGE);
    assert_restored(a, &s);
    sb_snap_restore(a, &s);
    assert_int_equal(s.copied, PAGE);

    b[3 * PAGE] = 1; /* pages 3 and 4: two runs, 3 pages */
    b[4 * PAGE + PAGE - 1] = 2;
    b[7 * PAGE + 5] = 3;
    sb_snap_restore(a, &s);
    assert_int_equal(s.copied, 3 * PAGE);
    assert_restored(a, &s);

    for (int i = 0; i < NPAGES; i += 2) /* now most pages: every one, unprotected */
        b[i * PAGE + 8] ^= 0x55;
    sb_snap_restore(a, &s);
    assert_true(s.full);
    assert_restored(a, &s);
    b[(NPAGES - 1) * PAGE] ^= 1;
    sb_snap_restore(a, &s);
    assert_int_equal(s.copied, NPAGES * PAGE);
    assert_restored(a, &s);

    sb_snap_free(&s);
    sb_arena_free(a);
}

/* Scattered writes: past 16 runs of hot pages the protection goes at once
 * (every run among read-only pages costs the process two mappings). */
static void test_scattered_writes_unprotect(void **state)
{
    (void)state;
    assert_int_equal(sb_snap_claim(), 0);
    sb_arena_t *a = filled_arena(200);
    sb_snap_t s;
    assert_int_equal(sb_snap_take(a, &s), 0);
    sb_snap_restore(a, &s);
    for (size_t i = 0; i < 200; i += 8) /* 25 runs, an eighth of the pages */
        ((char *)a)[i * PAGE + 1] ^= 1;
    assert_true(s.full);
    sb_snap_restore(a, &s);
    assert_int_equal(s.copied, s.npages * PAGE);
    assert_restored(a, &s);
    sb_snap_free(&s);
    sb_arena_free(a);
}

/* Random writes anywhere in the used pages, allocations among them: after
 * every restore the arena is the snapshot, byte for byte. */
static void test_restore_exact(void **state)
{
    (void)state;
    assert_int_equal(sb_snap_claim(), 0);
    sb_arena_t *a = filled_arena(NPAGES);
    size_t live = sb_arena_live(a);
    sb_snap_t s;
    assert_int_equal(sb_snap_take(a, &s), 0);
    unsigned x = 99;
    for (int round = 0; round < 3000; round++) {
        sb_snap_restore(a, &s);
        assert_restored(a, &s);
        assert_int_equal(sb_arena_live(a), live);
        if (round % 7 == 0) /* the header and fresh blocks above the snapshot */
            assert_non_null(sb_arena_alloc(a, NULL, 0, 64 + round % 300));
        /* Few pages per round, mostly the same ones, as requests do. */
        int writes = 1 + (int)((x = x * 1103515245u + 12345u) >> 16) % 3;
        for (int w = 0; w < writes; w++) {
            x = x * 1103515245u + 12345u;
            size_t page = (x >> 16) % 8 == 0 ? (x >> 8) % NPAGES : (x >> 8) % 3;
            ((char *)a)[page * PAGE + (x >> 4) % PAGE] ^= (char)(1 + x % 255);
        }
    }
    sb_snap_restore(a, &s);
    assert_restored(a, &s);
    sb_snap_free(&s);
    sb_arena_free(a);
}

/* A write from a signal handler (the time limit's sets a hook in the Lua
 * state) is tracked like any other. */
static char *signalled;

static void write_from_handler(int sig)
{
    (void)sig;
    signalled[5 * PAGE + 9] ^= 0x11;
}

static void test_write_in_signal_handler(void **state)
{
    (void)state;
    assert_int_equal(sb_snap_claim(), 0);
    sb_arena_t *a = filled_arena(NPAGES);
    sb_snap_t s;
    assert_int_equal(sb_snap_take(a, &s), 0);
    sb_snap_restore(a, &s);
    signalled = (char *)a;
    struct sigaction sa = {.sa_handler = write_from_handler}, old;
    assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
    raise(SIGUSR1);
    sigaction(SIGUSR1, &old, NULL);
    assert_int_equal(memcmp(a, s.copy, s.npages * PAGE) != 0, 1);
    sb_snap_restore(a, &s);
    assert_int_equal(s.copied, PAGE);
    assert_restored(a, &s);
    sb_snap_free(&s);
    sb_arena_free(a);
}

static int report_fd = -1; /* the child's end of a pipe to the parent */

/* In a child with the default SIGSEGV action under the sandbox's handler
 * (or `handler`, when not NULL): how it ends. With *reported (when not NULL):
 * whether the child wrote to report_fd. */
static int child_status(void (*body)(void), void (*handler)(int), int *reported)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        report_fd = p[1];
        alarm(10);
        signal(SIGSEGV, handler ? handler : SIG_DFL);
        if (sb_snap_claim() < 0)
            _exit(3);
        body();
        _exit(0);
    }
    close(p[1]);
    int st;
    char c;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (reported)
        *reported = read(p[0], &c, 1) == 1;
    close(p[0]);
    return st;
}

static void write_other_arena(void)
{
    sb_arena_t *a = filled_arena(NPAGES), *b = filled_arena(NPAGES);
    sb_snap_t sa, sb;
    if (sb_snap_take(a, &sa) < 0 || sb_snap_take(b, &sb) < 0)
        _exit(4);
    sb_snap_restore(b, &sb);   /* b's pages read-only */
    sb_snap_restore(a, &sa);   /* a is the one running */
    ((char *)a)[2 * PAGE] = 1; /* tracked */
    ((char *)b)[2 * PAGE] = 1; /* not the running arena's: a crash */
    _exit(0);
}

static void write_guard_page(void)
{
    char *p = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        _exit(4);
    *(volatile char *)p = 1; /* a protection fault, not on an arena */
}

static void test_other_faults_kill(void **state)
{
    (void)state;
    int st = child_status(write_other_arena, NULL, NULL);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
    st = child_status(write_guard_page, NULL, NULL);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
}

/* The handler the sandbox replaced (a crash reporter, say) still gets the
 * faults that are not the sandbox's, also after a framework put the
 * sandbox's back with signal(), which drops its flags, as cmocka does. */
static void reporter(int sig)
{
    (void)sig;
    if (write(report_fd, "R", 1) != 1)
        _exit(2);
    _exit(42);
}

static void write_guard_page_after_signal_dance(void)
{
    sb_arena_t *a = filled_arena(NPAGES);
    sb_snap_t s;
    if (sb_snap_take(a, &s) < 0)
        _exit(4);
    void (*ours)(int) = signal(SIGSEGV, SIG_DFL);
    signal(SIGSEGV, ours);
    if (sb_snap_claim() < 0)
        _exit(5);
    sb_snap_restore(a, &s);
    ((char *)a)[3 * PAGE] = 1; /* tracked, not reported */
    sb_snap_restore(a, &s);
    if (s.copied != PAGE || memcmp(a, s.copy, s.npages * PAGE) != 0)
        _exit(6);
    write_guard_page();
}

static void test_previous_handler_chained(void **state)
{
    (void)state;
    /* The reporter's word, not its exit status: valgrind's --error-exitcode
     * replaces that (the guard page write is an error to memcheck). */
    int reported;
    child_status(write_guard_page, reporter, &reported);
    assert_true(reported);
    child_status(write_guard_page_after_signal_dance, reporter, &reported);
    assert_true(reported);
}

/* SANDBOX_NOPROTECT: no protection, every restore copies every page. */
static void full_copies(void)
{
    setenv("SANDBOX_NOPROTECT", "1", 1);
    if (sb_snap_init() < 0)
        _exit(3);
    sb_arena_t *a = filled_arena(NPAGES);
    sb_snap_t s;
    if (sb_snap_take(a, &s) < 0)
        _exit(4);
    for (int i = 0; i < 3; i++) {
        sb_snap_restore(a, &s);
        if (s.copied != NPAGES * PAGE || memcmp(a, s.copy, s.npages * PAGE) != 0)
            _exit(5);
        ((char *)a)[i * PAGE] ^= 1;
    }
    _exit(0);
}

static void test_noprotect(void **state)
{
    (void)state;
    int st = child_status(full_copies, NULL, NULL);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copies_written_pages),
        cmocka_unit_test(test_restore_exact),
        cmocka_unit_test(test_scattered_writes_unprotect),
        cmocka_unit_test(test_write_in_signal_handler),
        cmocka_unit_test(test_other_faults_kill),
        cmocka_unit_test(test_previous_handler_chained),
        cmocka_unit_test(test_noprotect),
    };
    /* The thread is set up as a runner's is (sandbox_run.c): its guard gives it
     * an alternate signal stack, which the sandbox's SIGSEGV handler runs
     * on. (valgrind needs one there: it takes a handler flagged so for one
     * that runs on it, and does not grow the main thread's stack for it.) */
    static sb_guard_t guard;
    if (sb_snap_init() < 0 || sb_guard_register(&guard) < 0)
        return 1;
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    sb_guard_unregister(&guard);
    return rc;
}
