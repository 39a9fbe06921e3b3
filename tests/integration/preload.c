/* An LD_PRELOAD library for tests/integration/test_incrementor.c, to see
 * what the process does with the system:
 * - makes a sync of a SQLite WAL file (a name ending in "-wal") take
 *   SLOW_SYNC_MS milliseconds longer, and appends "START END\n"
 *   (CLOCK_MONOTONIC, nanoseconds, after the delay) to the file
 *   SLOW_SYNC_LOG for each. So a test can see that an answer never leaves
 *   before the sync that makes its commit durable: with the delay, one that
 *   did would come back early.
 * - appends "FD EVENTS\n" to the file EPOLL_CTL_LOG for each epoll_ctl
 *   call that changes a descriptor's events (EPOLL_CTL_MOD), so a test can
 *   count them per request.
 * Built without sanitizers (the binaries under test may have them: the test
 * sets ASAN_OPTIONS=verify_asan_link_order=0). */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int is_wal(int fd)
{
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    return n > 4 && memcmp(path + n - 4, "-wal", 4) == 0;
}

/* Append the n bytes of line to the file named by $var, if set. A failure
 * is left for the test to find: a line missing from the log. */
static void log_line(const char *var, const char *line, int n)
{
    const char *log = getenv(var);
    if (!log)
        return;
    int lf = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (lf >= 0) {
        if (write(lf, line, (size_t)n) < 0) {
            /* the test finds the line missing */
        }
        close(lf);
    }
}

static int slow(int fd, int (*real)(int))
{
    if (!is_wal(fd))
        return real(fd);
    const char *ms = getenv("SLOW_SYNC_MS");
    int64_t start = now_ns();
    if (ms)
        usleep((useconds_t)atoi(ms) * 1000);
    int rc = real(fd);
    int64_t end = now_ns();
    char line[64];
    int n = snprintf(line, sizeof line, "%lld %lld\n", (long long)start, (long long)end);
    log_line("SLOW_SYNC_LOG", line, n);
    return rc;
}

int fdatasync(int fd)
{
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return slow(fd, real);
}

int fsync(int fd)
{
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return slow(fd, real);
}

int epoll_ctl(int ep, int op, int fd, struct epoll_event *ev)
{
    int (*real)(int, int, int, struct epoll_event *) =
        (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
    if (op == EPOLL_CTL_MOD) {
        char line[64];
        int n = snprintf(line, sizeof line, "%d %u\n", fd, ev ? ev->events : 0);
        log_line("EPOLL_CTL_LOG", line, n);
    }
    return real(ep, op, fd, ev);
}
