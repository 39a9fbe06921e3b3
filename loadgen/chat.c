#include "chat.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"
#include "procstat.h"

/* A connection's line buffer: our longest MSG (the padding and 64 bytes). */
#define LINE_CAP(o) ((size_t)(o)->chat_bytes + 128)

typedef struct conn {
    int fd, room, alive;
    size_t len;
    char *buf; /* LINE_CAP bytes */
} conn_t;

typedef struct room {
    unsigned round, got, alive;
    int64_t started_us;
} room_t;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int connect_one(const lg_opts_t *o)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    if (inet_pton(AF_INET, o->host, &sa.sin_addr) != 1)
        return -EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -errno;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* best effort */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Send a short line whole (the sockets are blocking: a SAY never waits long,
 * since every member reads all the time). Returns 0 or -errno. */
static int send_line(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

struct run {
    const lg_opts_t *o;
    conn_t *c;
    room_t *r;
    hist_t lat;
    uint64_t rounds, deliveries, timeouts, errors, joined;
    char *pad;  /* the SAYs' padding */
    char *line; /* a SAY being sent: LINE_CAP bytes */
    int64_t end_us;
    char first_err[128];
};

/* The next round of room i: its next member in turn says. */
static int start_round(struct run *R, unsigned i)
{
    room_t *rm = &R->r[i];
    unsigned m = R->o->chat_members;
    rm->round++;
    rm->got = 0;
    rm->started_us = now_us();
    for (unsigned k = 0; k < m; k++) { /* the next sender still connected */
        conn_t *c = &R->c[i * m + (rm->round + k) % m];
        if (!c->alive)
            continue;
        char *line = R->line;
        int n = snprintf(line, 64, "SAY %u %lld", rm->round, (long long)rm->started_us);
        memcpy(line + n, R->pad, R->o->chat_bytes);
        line[(size_t)n + R->o->chat_bytes] = '\n';
        return send_line(c->fd, line, (size_t)n + R->o->chat_bytes + 1);
    }
    return -ENOTCONN;
}

/* One line that connection c read. */
static void on_line(struct run *R, conn_t *c, const char *line)
{
    unsigned round;
    long long t;
    room_t *rm = &R->r[c->room];
    if (strncmp(line, "JOINED ", 7) == 0) {
        R->joined++;
    } else if (sscanf(line, "MSG %u %lld", &round, &t) == 2) {
        if (round != rm->round)
            return; /* a round that timed out */
        int64_t now = now_us();
        hist_record(&R->lat, (uint64_t)(now - t));
        R->deliveries++;
        if (++rm->got >= rm->alive) {
            R->rounds++;
            if (now < R->end_us && (!R->o->requests || R->rounds < R->o->requests) &&
                start_round(R, (unsigned)c->room) < 0)
                R->errors++;
        }
    } else {
        R->errors++;
        if (!R->first_err[0])
            snprintf(R->first_err, sizeof R->first_err, "%.100s", line);
    }
}

/* c is readable: read, and take every whole line. */
static void on_readable(struct run *R, conn_t *c)
{
    size_t cap = LINE_CAP(R->o);
    ssize_t n = recv(c->fd, c->buf + c->len, cap - 1 - c->len, MSG_DONTWAIT);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        c->alive = 0; /* closed by the server (a slow consumer's cut) */
        R->r[c->room].alive--;
        close(c->fd);
        return;
    }
    c->len += (size_t)n;
    char *p = c->buf, *nl;
    while ((nl = memchr(p, '\n', c->len - (size_t)(p - c->buf))) != NULL) {
        *nl = '\0';
        on_line(R, c, p);
        p = nl + 1;
    }
    c->len -= (size_t)(p - c->buf);
    memmove(c->buf, p, c->len);
    if (c->len == cap - 1)
        c->len = 0; /* a line longer than ours: not one of them */
}

/* Wait for events up to timeout_ms and handle them. Returns 0 or -errno. */
static int pump(struct run *R, int ep, int timeout_ms)
{
    struct epoll_event ev[256];
    int n = epoll_wait(ep, ev, 256, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        conn_t *c = ev[i].data.ptr;
        if (c->alive)
            on_readable(R, c);
    }
    return 0;
}

static void report(struct run *R, double secs, double cpu_s, double csw, int cpu_ok)
{
    const lg_opts_t *o = R->o;
    double per = R->deliveries ? cpu_s * 1e6 / (double)R->deliveries : 0;
    double csw_per = R->deliveries ? csw / (double)R->deliveries : 0;
    if (!o->quiet) {
        printf("chat: %u rooms x %u members, %s:%d, %.2f s\n", o->chat_rooms, o->chat_members,
               o->host, o->port, secs);
        printf("  rounds (SAY)      %10llu  %12.1f/s\n", (unsigned long long)R->rounds,
               (double)R->rounds / secs);
        printf("  deliveries (MSG)  %10llu  %12.1f/s  (the fan-out rate)\n",
               (unsigned long long)R->deliveries, (double)R->deliveries / secs);
        printf("  delivery latency  p50 %llu us  p90 %llu us  p99 %llu us  max %llu us\n",
               (unsigned long long)hist_percentile(&R->lat, 50),
               (unsigned long long)hist_percentile(&R->lat, 90),
               (unsigned long long)hist_percentile(&R->lat, 99), (unsigned long long)R->lat.max);
        printf("  timeouts %llu  errors %llu%s%s\n", (unsigned long long)R->timeouts,
               (unsigned long long)R->errors, R->first_err[0] ? "  first: " : "", R->first_err);
        if (cpu_ok)
            printf("  server CPU        %.2f us per delivery, %.3f context switches\n", per,
                   csw_per);
    }
    if (o->json_path) {
        FILE *f = fopen(o->json_path, "w");
        if (!f) {
            fprintf(stderr, "loadgen: %s: %s\n", o->json_path, strerror(errno));
            return;
        }
        fprintf(f,
                "{\"chat\": {\"rooms\": %u, \"members\": %u, \"seconds\": %.3f, \"rounds\": %llu, "
                "\"deliveries\": %llu, \"says_per_s\": %.1f, \"fanout_per_s\": %.1f, "
                "\"latency_us\": {\"p50\": %llu, \"p90\": %llu, \"p99\": %llu, \"max\": %llu}, "
                "\"timeouts\": %llu, \"errors\": %llu",
                o->chat_rooms, o->chat_members, secs, (unsigned long long)R->rounds,
                (unsigned long long)R->deliveries, (double)R->rounds / secs,
                (double)R->deliveries / secs, (unsigned long long)hist_percentile(&R->lat, 50),
                (unsigned long long)hist_percentile(&R->lat, 90),
                (unsigned long long)hist_percentile(&R->lat, 99), (unsigned long long)R->lat.max,
                (unsigned long long)R->timeouts, (unsigned long long)R->errors);
        if (cpu_ok)
            fprintf(f, ", \"server_cpu_us_per_delivery\": %.3f, \"ctxsw_per_delivery\": %.4f", per,
                    csw_per);
        fprintf(f, "}}\n");
        fclose(f);
    }
}

int chat_main(const lg_opts_t *o)
{
    static struct run R;
    unsigned total = o->chat_rooms * o->chat_members;
    int ep = epoll_create1(EPOLL_CLOEXEC), status = 1;
    procstat_t ps = {0};
    int cpu_ok = o->server_pid && procstat_open(&ps, o->server_pid) == 0;
    R.o = o;
    R.c = calloc(total, sizeof *R.c);
    R.r = calloc(o->chat_rooms, sizeof *R.r);
    R.pad = malloc(o->chat_bytes + 1);
    R.line = malloc(LINE_CAP(o));
    if (ep < 0 || !R.c || !R.r || !R.pad || !R.line) {
        fprintf(stderr, "loadgen: out of memory\n");
        goto out;
    }
    memset(R.pad, 'x', o->chat_bytes);
    R.pad[0] = ' ';
    for (unsigned i = 0; i < total; i++) {
        conn_t *c = &R.c[i];
        char line[64];
        c->room = (int)(i / o->chat_members);
        if (!(c->buf = malloc(LINE_CAP(o)))) {
            fprintf(stderr, "loadgen: out of memory\n");
            goto out;
        }
        if ((c->fd = connect_one(o)) < 0) {
            fprintf(stderr, "loadgen: connect: %s\n", strerror(-c->fd));
            goto out;
        }
        c->alive = 1;
        R.r[c->room].alive++;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
        int n = snprintf(line, sizeof line, "JOIN room%d\n", c->room);
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e) < 0 || send_line(c->fd, line, (size_t)n) < 0) {
            fprintf(stderr, "loadgen: JOIN: %s\n", strerror(errno));
            goto out;
        }
    }
    int64_t join_end = now_us() + 10 * 1000000LL;
    while (R.joined < total && now_us() < join_end && !R.errors)
        if (pump(&R, ep, 100) < 0)
            goto out;
    if (R.joined < total) {
        fprintf(stderr, "loadgen: %llu of %u connections joined%s%s\n",
                (unsigned long long)R.joined, total, R.first_err[0] ? ": " : "", R.first_err);
        goto out;
    }
    if (cpu_ok)
        procstat_sample(&ps);
    procstat_cpu_t cpu0 = ps.cpu;
    double csw0 = (double)(ps.vcsw + ps.nvcsw), user_s = 0, system_s = 0;
    int64_t t0 = now_us();
    R.end_us = o->duration_us ? t0 + o->duration_us : INT64_MAX;
    for (unsigned i = 0; i < o->chat_rooms; i++)
        if (start_round(&R, i) < 0)
            R.errors++;
    /* Until the time is up and the rounds under way have ended (or timed out). */
    for (;;) {
        int64_t now = now_us();
        int busy = 0;
        for (unsigned i = 0; i < o->chat_rooms; i++) {
            room_t *rm = &R.r[i];
            if (rm->got >= rm->alive || !rm->alive)
                continue;
            if (now - rm->started_us > o->timeout_ms * 1000) {
                R.timeouts++;
                rm->got = rm->alive; /* given up */
                if (now < R.end_us && start_round(&R, i) < 0)
                    R.errors++;
            }
            busy |= rm->got < rm->alive;
        }
        if ((now >= R.end_us || (o->requests && R.rounds >= o->requests)) && !busy)
            break;
        if (pump(&R, ep, 10) < 0)
            goto out;
    }
    double secs = (double)(now_us() - t0) / 1e6;
    if (cpu_ok)
        cpu_ok = procstat_sample(&ps) == 0;
    procstat_cpu_delta(&cpu0, &ps.cpu, &user_s, &system_s);
    report(&R, secs, user_s + system_s, (double)(ps.vcsw + ps.nvcsw) - csw0, cpu_ok);
    status = R.rounds > 0 ? 0 : 1;
out:
    for (unsigned i = 0; R.c && i < total; i++) {
        if (R.c[i].alive)
            close(R.c[i].fd);
        free(R.c[i].buf);
    }
    free(R.pad);
    free(R.line);
    if (o->server_pid && cpu_ok)
        procstat_close(&ps);
    free(R.c);
    free(R.r);
    if (ep >= 0)
        close(ep);
    return status;
}
