/* world-link: an emulated network link between two TUN devices.
 *
 * Each end is a TUN device (created beforehand, e.g. by `ip tuntap add`, in
 * a host's network namespace); the program opens both, one after setns()
 * into each namespace, and moves every IP packet read from one to the other
 * after the delay, jitter, loss, rate and queue of that direction (link.h
 * says in what order). Single-threaded: one epoll over both devices, a
 * timerfd armed for the earliest departure and a signalfd. SIGUSR1 prints
 * the counters and the program's CPU per packet as one JSON line on stdout;
 * SIGTERM, SIGINT and SIGHUP print them and exit 0. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "core/opt.h"
#include "core/proto.h"
#include "link.h"

#define BURST    64 /* packets read from one device before the departures are served */
#define MAXPKT   65536
#define GRACE_NS 5000   /* a departure this close to now leaves now */
#define LATE_MAX 300000 /* the most the timer is armed early */

typedef struct pkt {
    uint32_t len;
    unsigned char data[];
} pkt_t;

typedef struct cfg {
    const char *end[2]; /* "NS:DEV" */
    wl_params_t p[2];   /* a->b, b->a */
    uint64_t seed;
    int cpu; /* -1: not pinned */
    int with_parent;
    int realtime;
} cfg_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The value of a per-direction flag: "X" for both, "X/Y" for a->b and b->a,
 * each half parsed by one. */
static int each_half(const char *val, char *err, size_t errlen,
                     int (*one)(const char *s, wl_params_t *p), wl_params_t *p)
{
    char h[2][64];
    if (wl_split_pair(val, h[0], h[1], sizeof h[0]) < 0) {
        snprintf(err, errlen, "expected VALUE or A->B/B->A");
        return -EINVAL;
    }
    wl_params_t tmp[2] = {p[0], p[1]};
    for (int i = 0; i < 2; i++)
        if (one(h[i], &tmp[i]) < 0)
            return -EINVAL;
    p[0] = tmp[0], p[1] = tmp[1];
    return 0;
}

static int one_delay(const char *s, wl_params_t *p)
{
    int64_t us;
    if (opt_parse_duration(s, &us) < 0)
        return -EINVAL;
    p->delay_ns = us * 1000;
    return 0;
}

static int one_jitter(const char *s, wl_params_t *p)
{
    int64_t us;
    if (opt_parse_duration(s, &us) < 0)
        return -EINVAL;
    p->jitter_ns = us * 1000;
    return 0;
}

static int one_loss(const char *s, wl_params_t *p)
{
    return wl_parse_loss(s, &p->loss);
}

static int one_rate(const char *s, wl_params_t *p)
{
    return wl_parse_rate(s, &p->rate_bps);
}

static int one_queue(const char *s, wl_params_t *p)
{
    return proto_parse_u64(s, strlen(s), 100000000, &p->queue_pkts) < 0 ? -EINVAL : 0;
}

static int one_queue_bytes(const char *s, wl_params_t *p)
{
    return opt_parse_size(s, 1, &p->queue_bytes);
}

static int opt_delay(const char *v, void *dst, char *err, size_t len)
{
    if (each_half(v, err, len, one_delay, dst) == 0)
        return 0;
    if (!*err)
        snprintf(err, len, "expected a duration such as 10ms (not negative)");
    return -EINVAL;
}

static int opt_jitter(const char *v, void *dst, char *err, size_t len)
{
    if (each_half(v, err, len, one_jitter, dst) == 0)
        return 0;
    if (!*err)
        snprintf(err, len, "expected a duration such as 1ms (not negative)");
    return -EINVAL;
}

static int opt_loss(const char *v, void *dst, char *err, size_t len)
{
    if (each_half(v, err, len, one_loss, dst) == 0)
        return 0;
    if (!*err)
        snprintf(err, len, "expected N%% with N from 0 to 100, or a probability from 0 to 1");
    return -EINVAL;
}

static int opt_rate(const char *v, void *dst, char *err, size_t len)
{
    if (each_half(v, err, len, one_rate, dst) == 0)
        return 0;
    if (!*err)
        snprintf(err, len, "expected a rate such as 100mbit (bit, kbit, mbit, gbit), or 0");
    return -EINVAL;
}

static int opt_queue(const char *v, void *dst, char *err, size_t len)
{
    if (each_half(v, err, len, one_queue, dst) == 0)
        return 0;
    if (!*err)
        snprintf(err, len, "expected a number of packets (0: no limit)");
    return -EINVAL;
}

static int opt_queue_bytes(const char *v, void *dst, char *err, size_t len)
{
    if (each_half(v, err, len, one_queue_bytes, dst) == 0)
        return 0;
    if (!*err)
        snprintf(err, len, "expected a size such as 64k (0: no limit)");
    return -EINVAL;
}

static int opt_dist(const char *v, void *dst, char *err, size_t len)
{
    wl_params_t *p = dst;
    int d;
    if (strcmp(v, "uniform") == 0)
        d = WL_UNIFORM;
    else if (strcmp(v, "normal") == 0)
        d = WL_NORMAL;
    else {
        snprintf(err, len, "expected uniform or normal");
        return -EINVAL;
    }
    p[0].jitter_dist = p[1].jitter_dist = d;
    return 0;
}

static int check_end(const char *v, void *dst, char *err, size_t len)
{
    (void)dst;
    const char *colon = strchr(v, ':');
    if (!colon || colon == v || strlen(colon + 1) == 0 || strlen(colon + 1) >= IFNAMSIZ) {
        snprintf(err, len, "expected NETNS:DEVICE (NETNS '-' for this one)");
        return -EINVAL;
    }
    return 0;
}

/* Open the TUN device of spec "NS:DEV", entering network namespace NS (a name
 * under /run/netns, a path, or "-") for the open and coming back. Returns
 * the descriptor (non-blocking) or a negative errno with err filled. */
static int tun_open(const char *spec, char *err, size_t errlen)
{
    char ns[256], path[300];
    const char *colon = strchr(spec, ':');
    int self = -1, nsfd = -1, fd = -1, rc;
    const char *what = "open /proc/self/ns/net";
    snprintf(ns, sizeof ns, "%.*s", (int)(colon - spec), spec);
    snprintf(path, sizeof path, "%s%s", ns[0] == '/' ? "" : "/run/netns/", ns);
    if (strcmp(ns, "-") != 0) {
        if ((self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
            goto err;
        what = path;
        if ((nsfd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || setns(nsfd, CLONE_NEWNET) < 0)
            goto err;
    }
    what = "/dev/net/tun";
    if ((fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)) < 0)
        goto err;
    struct ifreq ifr = {.ifr_flags = IFF_TUN | IFF_NO_PI};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", colon + 1);
    what = colon + 1;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        goto err;
    /* Without coming back, the second end would be looked for in the first's
     * namespace. A failure here leaves the process astray: fatal. */
    if (self >= 0 && setns(self, CLONE_NEWNET) < 0) {
        what = "setns back";
        goto err;
    }
    if (self >= 0)
        close(self);
    if (nsfd >= 0)
        close(nsfd);
    return fd;
err:
    rc = -errno;
    snprintf(err, errlen, "%s: %s: %s", spec, what, strerror(errno));
    if (fd >= 0)
        close(fd);
    if (nsfd >= 0)
        close(nsfd);
    if (self >= 0)
        close(self);
    return rc;
}

/* The lateness (us) that a fraction q of departures did not exceed: the upper
 * bound of its bucket, 0 for on time; -1 when nothing left, 1e9 past the last
 * bucket. */
static double late_quantile(const wl_counters_t *c, double q)
{
    uint64_t seen = 0;
    if (c->out == 0)
        return -1;
    for (int i = 0; i < WL_LATE_BUCKETS; i++) {
        seen += c->late[i];
        if ((double)seen >= q * (double)c->out)
            return i == WL_LATE_BUCKETS - 1 ? 1e9 : i * (WL_LATE_STEP_NS / 1000.0);
    }
    return 1e9;
}

static void print_dir(const char *name, const wl_dir_t *d, size_t pending)
{
    const wl_counters_t *c = &d->c;
    printf("\"%s\":{\"in\":%" PRIu64 ",\"out\":%" PRIu64 ",\"lost\":%" PRIu64
           ",\"queue_drop\":%" PRIu64 ",\"err\":%" PRIu64 ",\"bytes_in\":%" PRIu64
           ",\"bytes_out\":%" PRIu64 ",\"pending\":%zu,\"late_p50_us\":%g,"
           "\"late_p99_us\":%g}",
           name, c->in, c->out, c->lost, c->qdrop, c->err, c->bytes_in, c->bytes_out, pending,
           late_quantile(c, 0.5), late_quantile(c, 0.99));
}

/* One JSON line: both directions' counters and this program's CPU. */
static void print_stats(const wl_dir_t *dir, const wl_heap_t *heap, int64_t start)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    uint64_t pkts = dir[0].c.in + dir[1].c.in;
    printf("{");
    print_dir("ab", &dir[0], heap[0].n);
    printf(",");
    print_dir("ba", &dir[1], heap[1].n);
    printf(",\"cpu_s\":%.6f,\"wall_s\":%.6f,\"cpu_us_per_packet\":%.3f}\n", cpu,
           (double)(now_ns() - start) / 1e9, pkts ? cpu * 1e6 / (double)pkts : 0.0);
    fflush(stdout);
}

/* The earliest departure of both directions, 0 when none waits. */
static int64_t next_due(const wl_heap_t *heap)
{
    int64_t next = 0;
    for (int i = 0; i < 2; i++) {
        const wl_item_t *top = wl_heap_top(&heap[i]);
        if (top && (next == 0 || top->due < next))
            next = top->due;
    }
    return next;
}

/* Read up to BURST packets from fd into direction d. Returns 0, or a negative
 * errno for a device that failed (not EAGAIN). */
static int take(int fd, wl_dir_t *d, wl_heap_t *h, uint64_t *seq)
{
    static unsigned char buf[MAXPKT];
    for (int i = 0; i < BURST; i++) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -errno;
        int64_t due;
        if (wl_admit(d, now_ns(), (uint32_t)r, &due) != WL_PASS)
            continue;
        pkt_t *p = malloc(sizeof *p + (size_t)r);
        if (!p || wl_heap_push(h, (wl_item_t){.due = due, .seq = (*seq)++, .pkt = p}) < 0) {
            free(p);
            d->c.err++;
            continue;
        }
        p->len = (uint32_t)r;
        memcpy(p->data, buf, (size_t)r);
    }
    return 0;
}

/* Write every packet of h due by now to fd. */
static void give(int fd, wl_dir_t *d, wl_heap_t *h, int64_t now)
{
    const wl_item_t *top;
    wl_item_t it;
    while ((top = wl_heap_top(h)) && top->due <= now + GRACE_NS) {
        wl_heap_pop(h, &it);
        pkt_t *p = it.pkt;
        if (write(fd, p->data, p->len) == (ssize_t)p->len) {
            int64_t late = now - it.due;
            d->c.out++;
            d->c.bytes_out += p->len;
            d->c.late[late <= 0 ? 0
                      : late >= (int64_t)(WL_LATE_BUCKETS - 1) * WL_LATE_STEP_NS
                          ? WL_LATE_BUCKETS - 1
                          : late / WL_LATE_STEP_NS + 1]++;
        } else {
            d->c.err++;
        }
        free(p);
    }
}

static int run(const cfg_t *cfg)
{
    wl_dir_t dir[2];
    wl_heap_t heap[2] = {{0}};
    int fd[2] = {-1, -1}, ep = -1, tfd = -1, sfd = -1, rc = 1;
    char err[512];
    uint64_t seq = 0;
    int64_t armed = 0, late = 0, start = now_ns();
    sigset_t sigs;

    for (int i = 0; i < 2; i++)
        wl_dir_init(&dir[i], &cfg->p[i], cfg->seed * 2 + (uint64_t)i);
    for (int i = 0; i < 2; i++) {
        if ((fd[i] = tun_open(cfg->end[i], err, sizeof err)) < 0) {
            fprintf(stderr, "world-link: %s\n", err);
            goto out;
        }
    }
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGUSR1);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    ep = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    if (ep < 0 || tfd < 0 || sfd < 0) {
        fprintf(stderr, "world-link: epoll/timerfd/signalfd: %s\n", strerror(errno));
        goto out;
    }
    int watch[4] = {fd[0], fd[1], tfd, sfd};
    for (int i = 0; i < 4; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, watch[i], &ev) < 0) {
            fprintf(stderr, "world-link: epoll_ctl: %s\n", strerror(errno));
            goto out;
        }
    }
    /* Departures are due to the microsecond: the default 50 us timer slack
     * would be most of the 100 us the accuracy allows. */
    prctl(PR_SET_TIMERSLACK, 1UL);

    for (;;) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, -1), timer_woke = 0;
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "world-link: epoll_wait: %s\n", strerror(errno));
            goto out;
        }
        for (int i = 0; i < n; i++) {
            uint32_t w = evs[i].data.u32;
            if (w < 2) {
                int e = take(fd[w], &dir[w], &heap[w], &seq);
                if (e < 0) {
                    fprintf(stderr, "world-link: %s: read: %s\n", cfg->end[w], strerror(-e));
                    goto out;
                }
            } else if (w == 2) {
                uint64_t ticks;
                timer_woke = 1;
                if (read(tfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN)
                    goto out;
            } else {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                    print_stats(dir, heap, start);
                    if (si.ssi_signo != SIGUSR1) {
                        rc = 0;
                        goto out;
                    }
                }
            }
        }
        int64_t now = now_ns(), next;
        /* The timer wakes us late (tens of microseconds on this machine; `late`
         * follows it): it is armed that much early, so that departures are
         * as often a little early as late, and those due within GRACE_NS
         * leave together (spinning for them would cost a CPU). */
        if (timer_woke && armed) {
            int64_t sample = now - armed;
            late += ((sample > LATE_MAX ? LATE_MAX : sample) - late) / 8;
            armed = 0; /* it fired: one-shot, it must be armed again */
        }
        give(fd[1], &dir[0], &heap[0], now);
        give(fd[0], &dir[1], &heap[1], now);
        next = next_due(heap);
        int64_t when = next ? next - late : 0;
        if (next && when <= now)
            when = now + 1;
        if (when != armed) {
            struct itimerspec its = {.it_value = {when / 1000000000, when % 1000000000}};
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL); /* 0: disarmed */
            armed = when;
        }
    }
out:
    for (int i = 0; i < 2; i++) {
        wl_item_t it;
        while (wl_heap_pop(&heap[i], &it) == 0)
            free(it.pkt);
        wl_heap_free(&heap[i]);
        wl_dir_free(&dir[i]);
        if (fd[i] >= 0)
            close(fd[i]);
    }
    if (ep >= 0)
        close(ep);
    if (tfd >= 0)
        close(tfd);
    if (sfd >= 0)
        close(sfd);
    return rc;
}

int main(int argc, char **argv)
{
    cfg_t cfg = {.cpu = -1};
    int cpu = -1;
    for (int i = 0; i < 2; i++)
        cfg.p[i].queue_pkts = 1000;
    const opt_t opts[] = {
        OPT_STRING_E("a", 'a', &cfg.end[0], check_end, "NS:DEV",
                     "host A's end: TUN device DEV in network namespace NS\n"
                     "(a name under /run/netns, a path, or - for this one)"),
        OPT_STRING_E("b", 'b', &cfg.end[1], check_end, "NS:DEV", "host B's end"),
        OPT_CALL_E("delay", 'd', cfg.p, opt_delay, "D[/D]",
                   "one-way delay (a->b[/b->a]), e.g. 10ms (default 0)"),
        OPT_CALL_E("jitter", 'j', cfg.p, opt_jitter, "D[/D]", "jitter (default 0)"),
        OPT_CALL_E("jitter-dist", 0, cfg.p, opt_dist, "uniform|normal",
                   "uniform on [-J, +J] (the default), or normal with deviation J"),
        OPT_FLAG_E("reorder", 0, &cfg.p[0].reorder,
                   "let jitter reorder packets (default: each waits for the one ahead)"),
        OPT_CALL_E("loss", 'l', cfg.p, opt_loss, "P[/P]",
                   "packet loss, e.g. 1% or 0.01 (Bernoulli, seeded)"),
        OPT_CALL_E("rate", 'r', cfg.p, opt_rate, "R[/R]",
                   "bandwidth, e.g. 100mbit (bit, kbit, mbit, gbit; 0 = unlimited)"),
        OPT_CALL_E("queue", 'q', cfg.p, opt_queue, "N[/N]",
                   "queue limit in packets, tail drop (default 1000; 0 = none)"),
        OPT_CALL_E("queue-bytes", 0, cfg.p, opt_queue_bytes, "S[/S]",
                   "queue limit in bytes, e.g. 64k (default none)"),
        OPT_INT_E("seed", 's', &cfg.seed, 0, UINT32_MAX, "N", "random seed (default 0)"),
        OPT_INT_E("cpu", 0, &cpu, 0, 1023, "N", "run on CPU N only"),
        OPT_FLAG_E("with-parent", 0, &cfg.with_parent, "exit when the parent process does"),
        OPT_FLAG_E("realtime", 0, &cfg.realtime,
                   "run as SCHED_FIFO 1 (else nice -10): the network is not\n"
                   "one more process competing for the hosts' CPUs"),
        OPT_END,
    };
    const opt_spec_t spec = {
        .prog = "world-link",
        .about = "Move IP packets between two TUN devices as a link with a delay, jitter,\n"
                 "loss, a bandwidth and a queue. Per direction: X/Y is a->b/b->a.\n"
                 "SIGUSR1: counters and CPU per packet as a JSON line; SIGTERM: the same, exit.",
        .opts = opts,
    };
    opt_parse_or_exit(&spec, argc, argv, NULL, 0);
    cfg.p[1].reorder = cfg.p[0].reorder;
    if (!cfg.end[0] || !cfg.end[1]) {
        fprintf(stderr, "world-link: --a and --b are required\n");
        return 2;
    }
    if (cfg.with_parent) {
        /* The runner may be SIGKILLed: the link must not outlive it. */
        pid_t parent = getppid();
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            return 1;
    }
    if (cfg.realtime) {
        /* On a shared machine a starved link would drop at its TUN's queue
         * and delay everything: the loss and the delay must be the set ones.
         * Its CPU is small and reported; the kernel's RT throttling bounds it. */
        struct sched_param sp = {.sched_priority = 1};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0 && setpriority(PRIO_PROCESS, 0, -10) < 0)
            fprintf(stderr, "world-link: --realtime: %s (running as is)\n", strerror(errno));
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) {
            fprintf(stderr, "world-link: --cpu %d: %s\n", cpu, strerror(errno));
            return 2;
        }
    }
    return run(&cfg);
}
