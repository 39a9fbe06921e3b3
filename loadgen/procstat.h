/* procstat: what a process (the server under test) costs, read from /proc.
 *
 * CPU time: every thread's, exited ones included, from the process's CPU
 * clock (clock_getcpuclockid), in nanoseconds; split between user and
 * system as /proc/PID/stat's counts are, which come in clock ticks (10 ms
 * here: over a run of 0.1 s of CPU, 10% either way, which is why they are
 * not the total). Where the clock cannot be read, the ticks.
 * Context switches exist only per thread (/proc/PID/task/TID/status),
 * so the sampler remembers the last counts of every thread it has seen: a
 * thread that exits between two samples keeps what it had at the last one,
 * and one whose tid a new thread reuses too (gone_*). What a thread did
 * between its last sample and its exit, and a thread born and gone between
 * two samples, are not counted: the figure is a lower bound, and it never
 * goes down. */
#ifndef LOADGEN_PROCSTAT_H
#define LOADGEN_PROCSTAT_H

#include <stddef.h>
#include <stdint.h>

typedef struct procstat_task {
    int tid;
    uint64_t vcsw, nvcsw;
} procstat_task_t;

/* The CPU counters as of one sample, for procstat_cpu_delta. */
typedef struct procstat_cpu {
    double user_s, system_s; /* /proc/PID/stat, in clock ticks */
    double run_s;            /* the process's CPU clock; < 0: not read */
} procstat_cpu_t;

typedef struct procstat {
    int pid;
    procstat_cpu_t cpu;             /* as of the last sample */
    uint64_t vcsw, nvcsw;           /* summed over every thread seen */
    uint64_t gone_vcsw, gone_nvcsw; /* of the threads whose tid was reused */
    long rss_kb, hwm_kb;            /* VmRSS and VmHWM (peak) */
    long threads, threads_max;
    procstat_task_t *tasks; /* every thread seen: a hash on tid, cap slots */
    size_t ntasks, cap;
    long conns;               /* procstat_conns: open TCP connections */
    unsigned long listen[64]; /* the inodes of its listening sockets */
    int nlisten;              /* -1: not looked for yet */
} procstat_t;

/* Start watching pid. Returns 0 or -errno (-ESRCH: no such process). */
int procstat_open(procstat_t *p, int pid);

/* Take a sample (updates every field). Returns 0 or -errno (the process
 * is gone: the last sample stays). */
int procstat_sample(procstat_t *p);

/* The CPU time between two samples (from, then to) into *user_s and
 * *system_s: the clock's, split as the window's ticks are (as the
 * process's, when the window has none); the ticks when either sample has
 * no clock reading. */
void procstat_cpu_delta(const procstat_cpu_t *from, const procstat_cpu_t *to, double *user_s,
                        double *system_s);

/* Count the process's open connections into p->conns: its socket
 * descriptors less its listening sockets (found on the first call, in
 * /proc/PID/net/tcp and tcp6: state LISTEN). A readlink per descriptor, so
 * only a live run (--stream, --live) asks for it. Returns 0 or -errno (the
 * process is gone: the last count stays). */
int procstat_conns(procstat_t *p);

/* The CPUs this process may run on (its affinity mask) into *ncpus, and the
 * time they have been busy since boot into *busy_s, from /proc/stat: user,
 * nice, system, irq, softirq and steal (time the hypervisor gave to someone
 * else was not ours either). Whoever kept them busy counts, the load
 * generator or what shares its CPUs. Returns 0 or -errno. */
int procstat_cpus(int *ncpus, double *busy_s);

/* Free the thread table. */
void procstat_close(procstat_t *p);

#endif
