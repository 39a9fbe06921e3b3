/* loadgen: the project's load generator. Options and the run's shape here;
 * the hot path is engine.c (its backends engine_epoll.c and engine_uring.c), the lab's scenarios scenario.c, the output
 * report.c, the live figures (--stream, --live) live.c, the `loadgen merge`
 * subcommand merge.c. Exit status: 0 for a
 * completed run (errors are results, not failures), 2 for bad input or an
 * unreachable target, 1 for anything else. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/net.h"
#include "chat.h"
#include "core/timer.h"
#include "engine.h"
#include "live.h"
#include "merge.h"
#include "opts.h"
#include "probe.h"
#include "procstat.h"
#include "report.h"
#include "scenario.h"
#include "workload.h"

static lg_run_t run;
static atomic_int threads_done;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&run.stop, 1);
}

static void *thread_main(void *arg)
{
    engine_thread(arg);
    atomic_fetch_add(&threads_done, 1);
    return NULL;
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Enough descriptors for every connection the run opens. */
static void raise_fd_limit(const lg_opts_t *o)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)o->connections + o->idle + o->slowloris + o->slow_readers + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < need)
            fprintf(stderr,
                    "loadgen: warning: %llu descriptors allowed, %llu wanted: some "
                    "connections will fail\n",
                    (unsigned long long)rl.rlim_cur, (unsigned long long)need);
    }
}

/* A counter's growth since `then`: never negative, even if a sum of
 * per-thread counts (procstat) lost a thread's part. */
static uint64_t count_delta(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

static void server_sample(procstat_t *p, int *ok)
{
    if (*ok && procstat_sample(p) < 0)
        *ok = 0;
}

/* The CPU and the server's figures at one end of the measured window. */
typedef struct baseline {
    struct rusage ru;
    int cpus;           /* procstat_cpus: 0 when /proc/stat could not be read */
    double cpus_busy_s; /* the busy time of those CPUs since boot */
    procstat_cpu_t cpu;
    uint64_t vcsw, nvcsw;
    long rss_kb;
    int taken;
} baseline_t;

#define PUB_GIVE_UP_US 3000000 /* a second is published without a thread this late */
#define STREAM_QUEUE   8       /* --stream lines held for a slow reader before they are dropped */

/* One run: what main's steps hand each other. */
typedef struct app {
    lg_opts_t o;
    lg_workload_t w;
    scenario_t scen;
    procstat_t ps;
    int server_ok; /* ps is open and readable */
    lg_report_t rep;
    lg_thread_t *th;
    unsigned nt;
    baseline_t base;
    baseline_t end;         /* when the window closed: its CPUs' busy time */
    uint64_t last_req;      /* the progress line's previous count */
    live_t live;            /* --live's dashboard (off: fd -1) */
    int stream_ok;          /* --stream's descriptor takes lines (a failed write stops it) */
    char *sq[STREAM_QUEUE]; /* --stream's lines not written yet, from sq[sq_first] on */
    unsigned sq_first, sq_n;
    size_t sq_off;    /* bytes of the first one written already */
    uint64_t dropped; /* lines lost since the last one queued (the reader fell behind) */
    hist_t sec_h;     /* the second being published */
    int64_t secs_out; /* seconds published so far */
    baseline_t prev;  /* the server's counters as of the last second published */
} app_t;

/* Everything before the first request: the target reachable, the requests
 * built, the server's process and metrics found, the scenario's extra
 * connections open. Returns 0 or the exit status, the reason printed. */
static int setup(app_t *a)
{
    lg_opts_t *o = &a->o;
    char err[512];
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    raise_fd_limit(o);

    run.o = o;
    if (o->engine == LG_ENGINE_URING && engine_uring_probe(&run.io_features, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: io_uring unavailable (%s): using the epoll engine\n", err);
        o->engine = LG_ENGINE_EPOLL;
    }
    run.backend = o->engine == LG_ENGINE_URING ? &engine_uring : &engine_epoll;
    if (net_resolve(o->host, o->port, &run.addr, &run.addrlen, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 2;
    }
    if (probe_ready(o, &run.addr, run.addrlen, o->wait_ready_ms,
                    o->timeout_ms < 2000 ? o->timeout_ms : 2000, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: cannot reach %s: %s\n", o->target, err);
        return 2;
    }
    if (workload_build(&a->w, o, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 2;
    }
    run.w = &a->w;
    if (o->stream_fd >= 0 && fcntl(o->stream_fd, F_GETFD) < 0) {
        fprintf(stderr, "loadgen: --stream %d: not an open descriptor\n", o->stream_fd);
        return 2;
    }
    /* Non-blocking: a reader that stalls costs lines, not the run. The flag
     * is on the open file, shared with whoever else holds it. */
    int fl = o->stream_fd >= 0 ? fcntl(o->stream_fd, F_GETFL) : -1;
    if (fl >= 0 && fcntl(o->stream_fd, F_SETFL, fl | O_NONBLOCK) < 0)
        fprintf(stderr, "loadgen: warning: --stream %d: cannot make it non-blocking: %s\n",
                o->stream_fd, strerror(errno));
    a->stream_ok = o->stream_fd >= 0;
    live_init_off(&a->live);
    if (o->live_port >= 0) {
        if (live_open(&a->live, o->live_port, err, sizeof err) < 0) {
            fprintf(stderr, "loadgen: --live: %s\n", err);
            return 2;
        }
        fprintf(stderr, "loadgen: live dashboard on http://127.0.0.1:%d/\n", a->live.port);
    }
    run.publish = a->stream_ok || o->live_port >= 0;
    if (o->server_pid) {
        if (procstat_open(&a->ps, o->server_pid) < 0) {
            fprintf(stderr, "loadgen: --server-pid %d: no such process\n", o->server_pid);
            return 2;
        }
        a->server_ok = 1;
    }
    a->rep.o = o;
    if (o->metrics_url) {
        if (probe_scrape(o->metrics_url, 2000, &a->rep.before, err, sizeof err) < 0) {
            fprintf(stderr, "loadgen: --metrics: %s\n", err);
            return 2;
        }
        a->rep.have_metrics = 1;
    }
    if (scenario_start(&a->scen, o, &run.addr, run.addrlen, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 1;
    }
    scenario_wait_ready(&a->scen, o->timeout_ms > 5000 ? o->timeout_ms : 5000);
    return 0;
}

/* Where the busy time of loadgen's CPUs stands, into b (cpus 0 when
 * /proc/stat cannot say: the figure is left out). */
static void sample_cpus(baseline_t *b)
{
    if (procstat_cpus(&b->cpus, &b->cpus_busy_s) < 0)
        b->cpus = 0;
    b->taken = 1;
}

/* The measured window opens: note where the CPU counters stand. */
static void open_window(app_t *a)
{
    baseline_t *b = &a->base;
    getrusage(RUSAGE_SELF, &b->ru);
    sample_cpus(b);
    server_sample(&a->ps, &a->server_ok);
    /* ps is zero without --server-pid: the copy is harmless then. */
    b->cpu = a->ps.cpu;
    b->vcsw = a->ps.vcsw, b->nvcsw = a->ps.nvcsw, b->rss_kb = a->ps.rss_kb;
    b->taken = 1;
    a->prev = *b; /* the first published second's deltas start here */
}

/* --start-at: sleep until that wall-clock time (a signal ends the wait: the
 * threads then see the stop and end at once). Late by more than a second,
 * it says so: the agents did not start together. */
static void wait_start(int64_t at_ms)
{
    struct timespec at = {.tv_sec = at_ms / 1000, .tv_nsec = (at_ms % 1000) * 1000000};
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t late_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - at_ms;
    if (late_ms > 1000)
        fprintf(stderr, "loadgen: warning: --start-at was %lld ms ago: starting now\n",
                (long long)late_ms);
    while (!atomic_load(&run.stop) &&
           clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &at, NULL) == EINTR)
        ;
}

/* Start the threads, each with its share of the connections and of -n.
 * Returns 0 or the exit status, the reason printed. */
static int launch(app_t *a)
{
    const lg_opts_t *o = &a->o;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    a->nt = o->threads;
    a->th = calloc(a->nt, sizeof *a->th);
    if (!a->th) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    if (o->start_at_ms)
        wait_start(o->start_at_ms);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    run.start_us = time_now_us();
    a->rep.window_start_s =
        (double)wall.tv_sec + (double)wall.tv_nsec / 1e9 + (double)o->warmup_us / 1e6;
    run.window_us = run.start_us + o->warmup_us;
    run.end_us = o->duration_us ? run.window_us + o->duration_us : INT64_MAX;
    if (o->warmup_us == 0)
        open_window(a);

    unsigned first = 0;
    for (unsigned i = 0; i < a->nt; i++) {
        lg_thread_t *t = &a->th[i];
        engine_pub_init(t);
        t->run = &run;
        t->id = i;
        t->first_conn = first;
        t->nconns = o->connections / a->nt + (i < o->connections % a->nt);
        first += t->nconns;
        if (o->requests)
            t->quota = o->requests / a->nt + (i < o->requests % a->nt);
        if (o->requests && t->quota == 0) { /* -n smaller than -t */
            atomic_fetch_add(&threads_done, 1);
            atomic_store(&t->pub_done, INT64_MAX); /* publishes nothing */
            t->nconns = 0;
            continue;
        }
        if (pthread_create(&t->tid, NULL, thread_main, t) != 0) {
            fprintf(stderr, "loadgen: cannot start thread %u\n", i);
            return 1;
        }
    }
    return 0;
}

/* One progress line on a terminal: what runs, for how long yet, the last
 * second's rate and the totals. */
static void print_progress(app_t *a, int64_t now)
{
    uint64_t req = 0, errs = 0;
    for (unsigned i = 0; i < a->nt; i++) {
        req += atomic_load_explicit(&a->th[i].live_requests, memory_order_relaxed);
        errs += atomic_load_explicit(&a->th[i].live_errors, memory_order_relaxed);
    }
    long long el = (long long)((now - run.window_us) / 1000000);
    char left[64];
    if (run.end_us != INT64_MAX)
        snprintf(left, sizeof left, "%llds of %llds, %llds left", el,
                 (long long)(a->o.duration_us / 1000000),
                 (long long)((run.end_us - now + 999999) / 1000000));
    else
        snprintf(left, sizeof left, "%llds, %llu of %llu requests", el, (unsigned long long)req,
                 (unsigned long long)a->o.requests);
    fprintf(stderr, "\rloadgen %s: %s: %llu req/s, %llu requests, %llu errors\033[K", a->o.target,
            left, (unsigned long long)(req - a->last_req), (unsigned long long)req,
            (unsigned long long)errs);
    a->last_req = req;
}

/* Send what --stream's queue holds, as far as the descriptor takes it now
 * (it is non-blocking: a reader that stalls must not stall the main thread,
 * which also serves the dashboard and hands the seconds over). A write
 * error other than EAGAIN (the reader is gone) stops streaming with one
 * warning. */
static void stream_flush(app_t *a)
{
    while (a->stream_ok && a->sq_n) {
        char *line = a->sq[a->sq_first];
        size_t len = strlen(line);
        ssize_t w = write(a->o.stream_fd, line + a->sq_off, len - a->sq_off);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            fprintf(stderr, "loadgen: --stream %d: %s: no more lines\n", a->o.stream_fd,
                    strerror(errno));
            a->stream_ok = 0;
            return;
        }
        a->sq_off += (size_t)w;
        if (a->sq_off < len)
            continue;
        free(line);
        a->sq_first = (a->sq_first + 1) % STREAM_QUEUE;
        a->sq_n--;
        a->sq_off = 0;
    }
}

/* Queue one line for --stream's descriptor (a pipe, a file, a socket:
 * write, not send; SIGPIPE is ignored) and send what the descriptor takes.
 * A reader STREAM_QUEUE lines behind loses the newest ones: they are
 * counted, and the next line that gets through says how many
 * ("dropped":N). */
static void stream_line(app_t *a, const char *line)
{
    if (!a->stream_ok)
        return;
    size_t n = strlen(line);
    char *text = NULL;
    if (a->sq_n < STREAM_QUEUE && n > 0 && line[n - 1] == '}')
        text = malloc(n + 48);
    if (!text) { /* full, or out of memory: this line is lost */
        a->dropped++;
        stream_flush(a);
        return;
    }
    memcpy(text, line, n);
    if (a->dropped) {
        n--; /* the object's closing brace */
        n += (size_t)snprintf(text + n, 48, ",\"dropped\":%llu}", (unsigned long long)a->dropped);
        a->dropped = 0;
    }
    text[n++] = '\n'; /* one write per line at most: never split by another writer's */
    text[n] = '\0';
    a->sq[(a->sq_first + a->sq_n) % STREAM_QUEUE] = text;
    a->sq_n++;
    stream_flush(a);
}

/* Send what is queued, waiting for the reader until until_us at most
 * (the run is over: the end line is worth a short wait, not a hang). */
static void stream_wait(app_t *a, int64_t until_us)
{
    for (;;) {
        stream_flush(a);
        int64_t left = until_us - time_now_us();
        if (!a->stream_ok || !a->sq_n || left <= 0)
            return;
        struct pollfd pf = {.fd = a->o.stream_fd, .events = POLLOUT};
        (void)poll(&pf, 1, (int)((left + 999) / 1000)); /* an error: the next write says */
    }
}

/* The last line (the run's totals): room made for it and sent, within
 * timeout_ms in all; what the reader did not take by then is let go (a line
 * begun may stay cut short). */
static void stream_last(app_t *a, const char *line, int timeout_ms)
{
    int64_t until = time_now_us() + (int64_t)timeout_ms * 1000;
    stream_wait(a, until);
    stream_line(a, line);
    stream_wait(a, until);
    while (a->sq_n) {
        free(a->sq[a->sq_first]);
        a->sq_first = (a->sq_first + 1) % STREAM_QUEUE;
        a->sq_n--;
    }
}

/* Publish the window's second a->secs_out (span_s long: the last one may
 * be shorter), as the threads finished it, on --stream and --live. */
static void publish_second(app_t *a, int64_t now, double span_s, int partial)
{
    live_sec_t s = {.sec = a->secs_out, .span_s = span_s, .partial = partial};
    hist_reset(&a->sec_h);
    for (unsigned i = 0; i < a->nt; i++)
        engine_take_published(&a->th[i], a->secs_out, &a->sec_h, &s.requests, &s.errors);
    s.p50 = hist_percentile(&a->sec_h, 50);
    s.p99 = hist_percentile(&a->sec_h, 99);
    s.p999 = hist_percentile(&a->sec_h, 99.9);
    s.elapsed_s = (double)(now - run.window_us) / 1e6;
    s.left_s = run.end_us == INT64_MAX ? -1
               : now < run.end_us      ? (double)(run.end_us - now) / 1e6
                                       : 0;
    if (a->server_ok) {
        server_sample(&a->ps, &a->server_ok);
        s.server = 1;
        procstat_cpu_delta(&a->prev.cpu, &a->ps.cpu, &s.user_s, &s.system_s);
        s.vcsw = count_delta(a->ps.vcsw, a->prev.vcsw);
        s.nvcsw = count_delta(a->ps.nvcsw, a->prev.nvcsw);
        s.rss_kb = a->ps.rss_kb;
        s.conns = a->ps.conns; /* as counted in the middle of the second (progress) */
        a->prev.cpu = a->ps.cpu;
        a->prev.vcsw = a->ps.vcsw, a->prev.nvcsw = a->ps.nvcsw;
    }
    char *line = live_sec_json(&s, a->o.target);
    if (line) {
        stream_line(a, line);
        (void)live_publish(&a->live, line); /* out of memory: the page misses a second */
        free(line);
    }
    a->secs_out++;
}

/* Has every thread finished second sec (engine.h, pub_done)? */
static int second_done(const app_t *a, int64_t sec)
{
    for (unsigned i = 0; i < a->nt; i++)
        if (atomic_load_explicit(&a->th[i].pub_done, memory_order_acquire) < sec)
            return 0;
    return 1;
}

/* Wait for the threads to end: open the window after the warm-up, sample
 * the server and show the progress once a second, publish each second once
 * every thread has finished it (at their next wake-up after its end, within
 * MAX_WAIT_US; one stopped for PUB_GIVE_UP_US is left out and the second
 * marked partial), and serve the dashboard meanwhile. */
static void progress(app_t *a)
{
    int tty = isatty(2) && !a->o.quiet;
    int64_t next_print = run.window_us + 1000000;
    int64_t next_conns = run.window_us + 500000;
    while (atomic_load(&threads_done) < (int)a->nt) {
        live_poll(&a->live, 20);
        stream_flush(a);
        int64_t now = time_now_us();
        if (!a->base.taken && now >= run.window_us)
            open_window(a);
        /* Within a poll of the window's end: the threads may go on for a
         * while with the answers still in flight, and that is not the
         * window the figure is over. */
        if (a->base.taken && !a->end.taken && now >= run.end_us)
            sample_cpus(&a->end);
        /* Connections in the middle of each second: at its end, the last
         * one's are closed already. */
        if (run.publish && a->server_ok && now >= next_conns && now < run.end_us) {
            next_conns += 1000000;
            (void)procstat_conns(&a->ps); /* gone: the last count stays */
        }
        /* The full seconds of the window here; a shorter last one below. */
        int64_t sec_end = run.window_us + (a->secs_out + 1) * 1000000;
        if (run.publish && a->base.taken && now >= sec_end && sec_end <= run.end_us) {
            int done = second_done(a, a->secs_out);
            if (done || now >= sec_end + PUB_GIVE_UP_US)
                publish_second(a, now, 1.0, !done);
        }
        if (now >= next_print) {
            next_print += 1000000;
            if (!run.publish)
                server_sample(&a->ps, &a->server_ok);
            if (tty)
                print_progress(a, now);
        }
    }
    if (run.publish && a->base.taken) {
        /* The seconds the loop had no time to publish (the threads have
         * finished them all now), the last one maybe partial. */
        int64_t now = time_now_us();
        int64_t end = now < run.end_us ? now : run.end_us;
        for (;;) {
            double span = (double)(end - run.window_us) / 1e6 - (double)a->secs_out;
            if (span <= 0.001)
                break;
            publish_second(a, now, span < 1 ? span : 1.0, 0);
        }
    }
    if (tty && a->last_req)
        fputc('\n', stderr);
}

/* Join the threads and merge what they measured into the report. Returns 0
 * or the exit status, the reason printed. */
static int collect(app_t *a)
{
    for (unsigned i = 0; i < a->nt; i++) {
        lg_thread_t *t = &a->th[i];
        if (t->nconns)
            pthread_join(t->tid, NULL);
        if (t->rc < 0) {
            fprintf(stderr, "loadgen: thread %u: %s\n", i, strerror(-t->rc));
            return 1;
        }
        if (engine_stats_merge(&a->rep.st, &t->st, a->o.increment_keys) < 0) {
            fprintf(stderr, "loadgen: out of memory\n");
            return 1;
        }
        engine_stats_free(&t->st);
    }
    scenario_stop(&a->scen);
    a->rep.scen = a->scen.st;
    return 0;
}

/* The window's length and the CPU figures into the report, end being the
 * counters when it closed. */
static void measure(app_t *a, const baseline_t *end)
{
    const struct rusage *ru1 = &end->ru;
    lg_report_t *rep = &a->rep;
    const baseline_t *b = &a->base;
    int64_t finish = rep->st.finish_us < run.end_us ? rep->st.finish_us : run.end_us;
    rep->duration_s = finish > run.window_us ? (double)(finish - run.window_us) / 1e6 : 0;
    rep->user_s = tv_s(ru1->ru_utime) - tv_s(b->ru.ru_utime);
    rep->system_s = tv_s(ru1->ru_stime) - tv_s(b->ru.ru_stime);
    if (b->cpus > 0 && end->cpus == b->cpus) { /* the same CPUs at both ends */
        rep->cpus = b->cpus;
        rep->cpus_busy_s =
            end->cpus_busy_s > b->cpus_busy_s ? end->cpus_busy_s - b->cpus_busy_s : 0;
    }
    if (!a->o.server_pid)
        return;
    rep->have_server = 1;
    procstat_cpu_delta(&b->cpu, &a->ps.cpu, &rep->server.user_s, &rep->server.system_s);
    rep->server.vcsw = count_delta(a->ps.vcsw, b->vcsw);
    rep->server.nvcsw = count_delta(a->ps.nvcsw, b->nvcsw);
    rep->server.peak_rss_kb = a->ps.hwm_kb;
    rep->server.rss_kb_start = b->rss_kb;
    rep->server.rss_kb_end = a->ps.rss_kb;
    rep->server.threads_max = a->ps.threads_max;
    procstat_close(&a->ps);
}

/* The summary, the JSON and the .hgrm the flags ask for. Returns 0, or 1
 * when a file could not be written. */
static int report(app_t *a)
{
    const lg_opts_t *o = &a->o;
    char err[512];
    int rc = 0;
    if (a->rep.have_metrics &&
        probe_scrape(o->metrics_url, 2000, &a->rep.after, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: --metrics after the run: %s\n", err);
        a->rep.have_metrics = 0;
    }
    if (!o->quiet)
        report_human(&a->rep, stdout);
    if (o->json_path && report_json(&a->rep, o->json_path, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        rc = 1;
    }
    if (o->hgrm_path && report_hgrm(&a->rep, o->hgrm_path, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        rc = 1;
    }
    if (o->hlog_path && report_hlog(&a->rep, o->hlog_path, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        rc = 1;
    }
    return rc;
}

/* The run's totals as the stream's last line (type "end") and the page's
 * end event. */
static void publish_end(app_t *a)
{
    const lg_report_t *r = &a->rep;
    uint64_t errs = 0;
    for (int k = 0; k < LG_ERR_N; k++)
        errs += r->st.errors[k];
    double cpu = r->server.user_s + r->server.system_s;
    json_t *j = json_pack(
        "{s:s, s:s, s:I, s:I, s:f, s:f, s:I, s:I, s:I, s:o}", "type", "end", "target", a->o.target,
        "requests", (json_int_t)r->st.requests, "errors", (json_int_t)errs, "duration_s",
        r->duration_s, "rps", r->duration_s > 0 ? (double)r->st.requests / r->duration_s : 0.0,
        "p50_us", (json_int_t)hist_percentile(&r->st.lat, 50), "p99_us",
        (json_int_t)hist_percentile(&r->st.lat, 99), "p999_us",
        (json_int_t)hist_percentile(&r->st.lat, 99.9), "server_cpu_per_req_us",
        r->have_server && r->st.requests ? json_real(cpu * 1e6 / (double)r->st.requests)
                                         : json_null());
    char *line =
        j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(j);
    stream_last(a, line ? line : "{\"type\":\"end\"}", 500);
    live_close(&a->live, line ? line : "{\"type\":\"end\"}", 500);
    free(line);
}

static void cleanup(app_t *a)
{
    engine_stats_free(&a->rep.st);
    probe_metrics_free(&a->rep.before);
    probe_metrics_free(&a->rep.after);
    workload_free(&a->w);
    opts_free(&a->o);
    free(a->th);
    curl_global_cleanup();
}

int main(int argc, char **argv)
{
    static app_t a; /* large (the report's histograms): not on the stack */
    char err[512];
    if (argc > 1 && strcmp(argv[1], "merge") == 0)
        return merge_main(argc - 1, argv + 1);
    int rc = opts_parse(&a.o, argc, argv, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 2;
    }
    if (rc > 0)
        return 0;
    if (a.o.chat_rooms) /* a load of its own: loadgen/chat.c */
        return chat_main(&a.o);
    if ((rc = setup(&a)) != 0 || (rc = launch(&a)) != 0)
        return rc;
    progress(&a);

    if (!a.base.taken) /* every thread ended within the warm-up: no CPUs' figure */
        getrusage(RUSAGE_SELF, &a.base.ru);
    getrusage(RUSAGE_SELF, &a.end.ru);
    if (!a.end.taken) /* -n: the window ends with the last answer */
        sample_cpus(&a.end);
    server_sample(&a.ps, &a.server_ok);
    if ((rc = collect(&a)) != 0)
        return rc;
    measure(&a, &a.end);
    rc = report(&a);
    if (run.publish)
        publish_end(&a);
    cleanup(&a);
    return rc;
}
