/* Unit tests for loadgen/procstat.c: the CPU time of another process, to
 * the clock's precision, counting the threads that have ended. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../loadgen/procstat.h"

#define SPIN_NS  15000000LL /* what the child burns per round: half-way between two ticks */
#define ROUNDS   5
#define MARGIN_S 0.002 /* the child's own steps around the spin, on a busy machine */

static int64_t cpu_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Burn SPIN_NS of this thread's CPU. */
static void *spin(void *arg)
{
    int64_t end = cpu_ns(CLOCK_THREAD_CPUTIME_ID) + SPIN_NS;
    while (cpu_ns(CLOCK_THREAD_CPUTIME_ID) < end) {
    }
    return arg;
}

/* The child: at each byte from go, burn SPIN_NS (in a thread of its own
 * that then ends, when `threaded`), then send what the process's CPU
 * clock moved; at EOF, exit. */
static void child(int go, int done, int threaded)
{
    char b;
    while (read(go, &b, 1) == 1) {
        int64_t t0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
        pthread_t th;
        if (!threaded)
            spin(NULL);
        else if (pthread_create(&th, NULL, spin, NULL) != 0 || pthread_join(th, NULL) != 0)
            _exit(1);
        int64_t used = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - t0;
        if (write(done, &used, sizeof used) != (ssize_t)sizeof used)
            _exit(1);
    }
    _exit(0);
}

/* Each round's CPU, as procstat measures it between a sample before the
 * round and one after, against what the child's own clock says: within
 * MARGIN_S. In clock ticks (10 ms) it would be 10 or 20 ms: 5 ms off. */
static void measure(int threaded)
{
    int go[2], done[2];
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(done), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        close(done[0]);
        child(go[0], done[1], threaded);
    }
    close(go[0]);
    close(done[1]);
    procstat_t ps;
    assert_int_equal(procstat_open(&ps, pid), 0);
    for (int r = 0; r < ROUNDS; r++) {
        procstat_cpu_t before = ps.cpu;
        int64_t used = 0;
        assert_int_equal(write(go[1], "g", 1), 1);
        assert_int_equal(read(done[0], &used, sizeof used), (ssize_t)sizeof used);
        assert_int_equal(procstat_sample(&ps), 0);
        double user_s, system_s;
        procstat_cpu_delta(&before, &ps.cpu, &user_s, &system_s);
        double got = user_s + system_s, want = (double)used / 1e9;
        if (got < want - MARGIN_S || got > want + MARGIN_S)
            fail_msg("round %d%s: %.4f s measured (user %.4f, system %.4f), the child used %.4f", r,
                     threaded ? " (a thread that ended)" : "", got, user_s, system_s, want);
        assert_true(user_s >= 0 && system_s >= 0);
    }
    close(go[1]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(done[0]);
    procstat_close(&ps);
}

static void test_cpu_precise(void **state)
{
    (void)state;
    measure(0);
}

static void test_cpu_ended_thread(void **state)
{
    (void)state;
    measure(1);
}

/* Without a clock reading at either end, the ticks. */
static void test_cpu_delta_ticks(void **state)
{
    (void)state;
    procstat_cpu_t a = {1.0, 2.0, -1}, b = {1.5, 2.25, 9.0};
    double u, s;
    procstat_cpu_delta(&a, &b, &u, &s);
    assert_true(u == 0.5 && s == 0.25);
    /* The clock at both ends: its time, split as the window's ticks. */
    a.run_s = 8.0;
    procstat_cpu_delta(&a, &b, &u, &s);
    assert_true(u > 0.666 && u < 0.667 && s > 0.333 && s < 0.334);
    /* No tick in the window: split as the process's. */
    b.user_s = 1.0, b.system_s = 2.0;
    procstat_cpu_delta(&a, &b, &u, &s);
    assert_true(u > 0.333 && u < 0.334 && s > 0.666 && s < 0.667);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_precise),
        cmocka_unit_test(test_cpu_ended_thread),
        cmocka_unit_test(test_cpu_delta_ticks),
    };
    return cmocka_run_group_tests_name("procstat", tests, NULL, NULL);
}
