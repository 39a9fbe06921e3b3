/* tproc: server binaries as real processes, started and stopped by PID. */
#include "tlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A start takes 30 ms (70 under ASan on a loaded machine); the bound is for
 * a machine stalled by others, which CI has seen exceed 5 s. */
#define START_TIMEOUT_MS 20000
#define MAX_PROCS        64

/* Started processes not reaped yet, so they can be killed at exit. */
static struct {
    pid_t pid;
    char log[512];
} procs[MAX_PROCS];
static int atexit_done;

long long tnow_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tsleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

const char *tproc_bin(const char *name)
{
    static char paths[8][512];
    static unsigned next;
    const char *bin = getenv("BIN");
    char *p = paths[next++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", bin && *bin ? bin : "bin", name);
    return p;
}

int tproc_exists(const char *name)
{
    return access(tproc_bin(name), X_OK) == 0;
}

static void kill_leftovers(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].pid > 0) {
            kill(-procs[i].pid, SIGKILL);
            waitpid(procs[i].pid, NULL, 0);
            procs[i].pid = 0;
        }
}

static int slot_of(pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].pid == pid)
            return i;
    return -1;
}

const char *tproc_log(pid_t pid)
{
    int i = slot_of(pid);
    return i >= 0 ? procs[i].log : NULL;
}

static void print_log(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[512];
    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", path);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fprintf(stderr, "---- end of log ----\n");
    fclose(f);
}

/* Where a process that does not start is stuck: whether it has exec'd
 * (its exe), its state and the kernel function it waits in, per thread. */
static void print_where(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    fprintf(stderr, "tproc: pid %d runs %.*s\n", (int)pid, n > 0 ? (int)n : 1, n > 0 ? buf : "?");
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char state[256] = "?", wchan[128] = "?";
        snprintf(path, sizeof path, "/proc/%d/task/%.16s/stat", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            /* after "(comm)": the state letter */
            if (fgets(buf, sizeof buf, f) && strrchr(buf, ')'))
                snprintf(state, sizeof state, "%.1s", strrchr(buf, ')') + 2);
            fclose(f);
        }
        snprintf(path, sizeof path, "/proc/%d/task/%.16s/wchan", (int)pid, e->d_name);
        if ((f = fopen(path, "r")) != NULL) {
            size_t k = fread(wchan, 1, sizeof wchan - 1, f);
            wchan[k] = '\0';
            fclose(f);
        }
        fprintf(stderr, "tproc:   thread %s state %s waits in %s\n", e->d_name, state, wchan);
    }
    if (d)
        closedir(d);
}

/* The port from a "listening on HOST:PORT" line in the log, 0 if not there yet. */
static int find_port(const char *path)
{
    char line[512];
    int port = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (!port && fgets(line, sizeof line, f)) {
        char *l = strstr(line, "listening on ");
        char *colon = l ? strrchr(l, ':') : NULL;
        if (colon && strchr(colon, '\n'))
            port = atoi(colon + 1);
    }
    fclose(f);
    return port;
}

/* In a child from tproc_fork: stdin and stdout on /dev/null, stderr on
 * errfd, then exec argv. Never returns. */
static void exec_child(const char *const argv[], int errfd)
{
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
    }
    dup2(errfd, 2);
    execv(argv[0], (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

pid_t tproc_start(const char *const argv[], int *port)
{
    /* The log is the whole of stderr; the parent watches it for the
     * listening line, and it stays for diagnosing a failure. */
    const char *tmp = getenv("TMPDIR");
    const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    static unsigned seq;
    char log[sizeof procs[0].log];
    snprintf(log, sizeof log, "%s/tproc-%s-%d-%u.log", tmp && *tmp ? tmp : "/tmp", base,
             (int)getpid(), seq++);
    int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (lfd < 0)
        return -errno;
    pid_t pid = tproc_fork();
    if (pid == 0)
        exec_child(argv, lfd);
    close(lfd);
    if (pid < 0)
        return pid;
    int slot = slot_of(pid);
    memcpy(procs[slot].log, log, sizeof log);

    long long end = tnow_ms() + START_TIMEOUT_MS;
    for (;;) {
        int p = find_port(log);
        if (p > 0) {
            if (port)
                *port = p;
            return pid;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            procs[slot].pid = 0;
            fprintf(stderr, "tproc: %s exited before listening (status 0x%x)\n", argv[0], st);
            print_log(log);
            return -ECHILD;
        }
        if (tnow_ms() > end)
            break;
        tsleep_ms(2);
    }
    fprintf(stderr, "tproc: %s did not print 'listening on' within %d ms\n", argv[0],
            START_TIMEOUT_MS);
    print_where(pid);
    print_log(log);
    tproc_stop(pid, 100);
    return -ETIMEDOUT;
}

/* Wait up to timeout_ms for pid to end, then SIGKILL its group; reap it
 * and forget it. Returns its exit code, 128+signal, or -errno. */
static int reap(pid_t pid, int timeout_ms)
{
    int slot = slot_of(pid), st = 0, killed = 0;
    if (pid <= 0 || slot < 0)
        return -ESRCH;
    long long end = tnow_ms() + timeout_ms;
    pid_t r;
    while ((r = waitpid(pid, &st, WNOHANG)) == 0) {
        if (tnow_ms() > end) {
            kill(-pid, SIGKILL);
            r = waitpid(pid, &st, 0);
            killed = 1;
            break;
        }
        tsleep_ms(2);
    }
    procs[slot].pid = 0;
    if (r < 0)
        return -errno;
    kill(-pid, SIGKILL); /* anything it started in its group */
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code != 0)
        fprintf(stderr, "tproc: pid %d %s with %d; its stderr: %s\n", (int)pid,
                killed ? "did not stop in time, killed" : "ended", code,
                procs[slot].log[0] ? procs[slot].log : "(not kept)");
    return code;
}

int tproc_stop(pid_t pid, int timeout_ms)
{
    if (pid <= 0 || slot_of(pid) < 0)
        return -ESRCH;
    kill(pid, SIGTERM);
    return reap(pid, timeout_ms);
}

int tproc_wait(pid_t pid, int timeout_ms)
{
    return reap(pid, timeout_ms);
}

void tproc_stop_all(int timeout_ms)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].pid > 0)
            tproc_stop(procs[i].pid, timeout_ms);
}

/* The child's side of tproc_fork: its own group, killed with its parent. */
static void become_child(pid_t parent)
{
    setpgid(0, 0);
    /* A test binary that crashes must not leave servers behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

pid_t tproc_fork(void)
{
    int slot = slot_of(0);
    if (slot < 0)
        return -EMFILE;
    if (!atexit_done) {
        atexit(kill_leftovers);
        atexit_done = 1;
    }
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        become_child(parent);
        return 0;
    }
    setpgid(pid, pid); /* also here: no race with the child's own call */
    procs[slot].pid = pid;
    procs[slot].log[0] = '\0';
    return pid;
}

int tproc_run(const char *const argv[], int timeout_ms, char *errbuf, size_t errlen)
{
    char errpath[] = "/tmp/tproc-run-XXXXXX";
    int efd = mkostemp(errpath, O_CLOEXEC);
    if (efd < 0)
        return -errno;
    unlink(errpath); /* read back through efd */
    pid_t pid = tproc_fork();
    if (pid < 0) {
        close(efd);
        return pid;
    }
    if (pid == 0)
        exec_child(argv, efd);
    int rc = reap(pid, timeout_ms);
    if (errbuf && errlen) {
        ssize_t n = pread(efd, errbuf, errlen - 1, 0);
        errbuf[n > 0 ? n : 0] = '\0';
    }
    close(efd);
    return rc;
}

long tproc_send_queue(pid_t pid, int lport, int rport)
{
    char path[64], line[512];
    long q = -1;
    snprintf(path, sizeof path, "/proc/%d/net/tcp", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (q < 0 && fgets(line, sizeof line, f)) {
        unsigned lp, rp;
        unsigned long tx;
        if (sscanf(line, " %*d: %*x:%x %*x:%x %*x %lx:", &lp, &rp, &tx) == 3 && (int)lp == lport &&
            (int)rp == rport)
            q = (long)tx;
    }
    fclose(f);
    return q;
}
