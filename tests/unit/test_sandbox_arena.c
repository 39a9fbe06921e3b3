/* Unit tests of the sandbox's snapshots (servers/core/sandbox_arena.c): a
 * restore puts back exactly the bytes of the snapshot whatever was written,
 * it copies back only the pages written since the snapshot (until most are),
 * and a fault that is not a write to the running arena's protected page
 * still kills the process. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/sandbox_int.h"

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

/* Scattered writes: past 64 runs of hot pages the protection goes at once
 * (every run among read-only pages costs the process two mappings). */
static void test_scattered_writes_unprotect(void **state)
{
    (void)state;
    assert_int_equal(sb_snap_claim(), 0);
    sb_arena_t *a = filled_arena(200);
    sb_snap_t s;
    assert_int_equal(sb_snap_take(a, &s), 0);
    sb_snap_restore(a, &s);
    for (size_t i = 0; i < 200; i += 3) /* 67 runs, a third of the pages */
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

/* In a child with the default SIGSEGV action under the sandbox's handler:
 * what kills it. */
static int child_status(void (*body)(void))
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(10);
        signal(SIGSEGV, SIG_DFL);
        if (sb_snap_claim() < 0)
            _exit(3);
        body();
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

static void write_other_arena(void)
{
    sb_arena_t *a = filled_arena(NPAGES), *b = filled_arena(NPAGES);
    sb_snap_t sa, sb;
    if (sb_snap_take(a, &sa) < 0 || sb_snap_take(b, &sb) < 0)
        _exit(4);
    sb_snap_restore(b, &sb); /* b's pages read-only */
    sb_snap_restore(a, &sa); /* a is the one running */
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
    int st = child_status(write_other_arena);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
    st = child_status(write_guard_page);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copies_written_pages),
        cmocka_unit_test(test_restore_exact),
        cmocka_unit_test(test_scattered_writes_unprotect),
        cmocka_unit_test(test_other_faults_kill),
    };
    if (sb_snap_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
