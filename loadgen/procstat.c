#include "procstat.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Read a small /proc file whole into buf. Returns its length or -errno. */
static ssize_t slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (ssize_t)n;
}

static long status_field(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    return p ? strtol(p + strlen(name), NULL, 10) : 0;
}

/* The thread table is an open-addressing hash on tid: a thread-per-connection
 * server may have tens of thousands of them. */
static procstat_task_t *task_slot(procstat_t *p, int tid)
{
    if (2 * (p->ntasks + 1) > p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        procstat_task_t *t = calloc(cap, sizeof *t);
        if (!t)
            return NULL;
        for (size_t i = 0; i < p->cap; i++) {
            if (!p->tasks[i].tid)
                continue;
            size_t h = ((uint32_t)p->tasks[i].tid * 2654435761u) & (cap - 1);
            while (t[h].tid)
                h = (h + 1) & (cap - 1);
            t[h] = p->tasks[i];
        }
        free(p->tasks);
        p->tasks = t;
        p->cap = cap;
    }
    size_t h = ((uint32_t)tid * 2654435761u) & (p->cap - 1);
    while (p->tasks[h].tid && p->tasks[h].tid != tid)
        h = (h + 1) & (p->cap - 1);
    if (!p->tasks[h].tid) {
        p->tasks[h].tid = tid;
        p->ntasks++;
    }
    return &p->tasks[h];
}

int procstat_open(procstat_t *p, int pid)
{
    memset(p, 0, sizeof *p);
    p->pid = pid;
    p->nlisten = -1;
    return procstat_sample(p);
}

int procstat_sample(procstat_t *p)
{
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", p->pid);
    if (slurp(path, text, sizeof text) < 0)
        return -ESRCH;
    /* Fields after the command name, which may hold spaces and parentheses. */
    char *s = strrchr(text, ')');
    unsigned long long ut = 0, st = 0;
    long nthreads = 0;
    if (!s ||
        sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %ld",
               &ut, &st, &nthreads) != 3)
        return -EINVAL;
    long hz = sysconf(_SC_CLK_TCK);
    p->cpu.user_s = (double)ut / (double)hz;
    p->cpu.system_s = (double)st / (double)hz;
    clockid_t clock;
    struct timespec ts;
    p->cpu.run_s = clock_getcpuclockid(p->pid, &clock) == 0 && clock_gettime(clock, &ts) == 0
                       ? (double)ts.tv_sec + (double)ts.tv_nsec / 1e9
                       : -1;
    p->threads = nthreads;
    if (nthreads > p->threads_max)
        p->threads_max = nthreads;

    snprintf(path, sizeof path, "/proc/%d/status", p->pid);
    if (slurp(path, text, sizeof text) > 0) {
        p->rss_kb = status_field(text, "VmRSS:");
        p->hwm_kb = status_field(text, "VmHWM:");
    }

    snprintf(path, sizeof path, "/proc/%d/task", p->pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            int tid = atoi(de->d_name);
            if (tid <= 0)
                continue;
            char tpath[96];
            snprintf(tpath, sizeof tpath, "/proc/%d/task/%d/status", p->pid, tid);
            if (slurp(tpath, text, sizeof text) <= 0)
                continue;
            procstat_task_t *t = task_slot(p, tid);
            if (!t)
                break;
            uint64_t v = (uint64_t)status_field(text, "\nvoluntary_ctxt_switches:");
            uint64_t nv = (uint64_t)status_field(text, "nonvoluntary_ctxt_switches:");
            if (v < t->vcsw || nv < t->nvcsw) {
                /* Fewer than last time: a new thread has the tid of one that
                 * exited. The old one's last counts stay in the sum. */
                p->gone_vcsw += t->vcsw;
                p->gone_nvcsw += t->nvcsw;
            }
            t->vcsw = v;
            t->nvcsw = nv;
        }
        closedir(d);
    }
    p->vcsw = p->gone_vcsw;
    p->nvcsw = p->gone_nvcsw;
    for (size_t i = 0; i < p->cap; i++) {
        p->vcsw += p->tasks[i].vcsw;
        p->nvcsw += p->tasks[i].nvcsw;
    }
    return 0;
}

void procstat_cpu_delta(const procstat_cpu_t *from, const procstat_cpu_t *to, double *user_s,
                        double *system_s)
{
    double u = to->user_s - from->user_s, s = to->system_s - from->system_s;
    if (from->run_s < 0 || to->run_s < from->run_s) {
        *user_s = u, *system_s = s;
        return;
    }
    double run = to->run_s - from->run_s, share = 0.5;
    if (u + s > 0)
        share = u / (u + s);
    else if (to->user_s + to->system_s > 0)
        share = to->user_s / (to->user_s + to->system_s);
    *user_s = run * share;
    *system_s = run - *user_s;
}

/* The inodes of the listening sockets in the process's network namespace
 * (a few: one per listener, or per loop with SO_REUSEPORT). */
static void find_listeners(procstat_t *p)
{
    static const char *const tables[] = {"tcp", "tcp6"};
    p->nlisten = 0;
    for (int t = 0; t < 2; t++) {
        char path[64], line[512];
        snprintf(path, sizeof path, "/proc/%d/net/%s", p->pid, tables[t]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* no IPv6 here: nothing listens there */
        while (fgets(line, sizeof line, f)) {
            unsigned st;
            unsigned long inode;
            /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
            if (sscanf(line, "%*s %*s %*s %x %*s %*s %*s %*s %*s %lu", &st, &inode) == 2 &&
                st == 0x0A && p->nlisten < (int)(sizeof p->listen / sizeof p->listen[0]))
                p->listen[p->nlisten++] = inode;
        }
        fclose(f);
    }
}

int procstat_conns(procstat_t *p)
{
    if (p->nlisten < 0)
        find_listeners(p);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", p->pid);
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    long n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char link[64];
        if (de->d_name[0] == '.')
            continue;
        ssize_t len = readlinkat(dirfd(d), de->d_name, link, sizeof link - 1);
        if (len <= 0)
            continue; /* closed since the readdir */
        link[len] = '\0';
        unsigned long inode;
        if (sscanf(link, "socket:[%lu]", &inode) != 1)
            continue;
        int listener = 0;
        for (int i = 0; i < p->nlisten && !listener; i++)
            listener = p->listen[i] == inode;
        n += !listener;
    }
    closedir(d);
    p->conns = n;
    return 0;
}

int procstat_cpus(int *ncpus, double *busy_s)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        return -errno;
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -errno;
    char line[512];
    unsigned long long busy = 0;
    int n = 0;
    /* "cpu" (the sum) first, then "cpuN user nice system idle iowait irq
     * softirq steal ..." per CPU; the lines after them are of no interest. */
    while (fgets(line, sizeof line, f) && strncmp(line, "cpu", 3) == 0) {
        unsigned cpu;
        unsigned long long t[8];
        if (sscanf(line, "cpu%u %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &t[0], &t[1], &t[2],
                   &t[3], &t[4], &t[5], &t[6], &t[7]) != 9 ||
            cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &set))
            continue;
        busy += t[0] + t[1] + t[2] + t[5] + t[6] + t[7];
        n++;
    }
    fclose(f);
    if (n == 0 || hz <= 0)
        return -ENOENT;
    *ncpus = n;
    *busy_s = (double)busy / (double)hz;
    return 0;
}

void procstat_close(procstat_t *p)
{
    free(p->tasks);
    p->tasks = NULL;
    p->ntasks = p->cap = 0;
}
