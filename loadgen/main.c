/* loadgen: the project's load generator. Options and the run's shape here;
 * the hot path is engine.c, the lab's scenarios scenario.c, the output
 * report.c. Exit status: 0 for a completed run (errors are results, not
 * failures), 2 for bad input or an unreachable target, 1 for anything else. */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/net.h"
#include "core/timer.h"
#include "engine.h"
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
            fprintf(stderr, "loadgen: warning: %llu descriptors allowed, %llu wanted: some "
                            "connections will fail\n",
                    (unsigned long long)rl.rlim_cur, (unsigned long long)need);
    }
}

static void server_sample(procstat_t *p, int *ok)
{
    if (*ok && procstat_sample(p) < 0)
        *ok = 0;
}

int main(int argc, char **argv)
{
    lg_opts_t o;
    lg_workload_t w;
    scenario_t scen;
    procstat_t ps;
    lg_report_t rep;
    char err[512];
    int rc, server_ok = 0;
    struct rusage ru0, ru1;
    double su0 = 0, ss0 = 0;
    uint64_t vcsw0 = 0, nvcsw0 = 0;
    long rss0 = 0;

    rc = opts_parse(&o, argc, argv, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 2;
    }
    if (rc > 0)
        return 0;
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    raise_fd_limit(&o);

    run.o = &o;
    if (net_resolve(o.host, o.port, &run.addr, &run.addrlen, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 2;
    }
    if (probe_ready(&o, &run.addr, run.addrlen, o.wait_ready_ms,
                    o.timeout_ms < 2000 ? o.timeout_ms : 2000, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: cannot reach %s: %s\n", o.target, err);
        return 2;
    }
    if (workload_build(&w, &o, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 2;
    }
    run.w = &w;
    if (o.server_pid) {
        if (procstat_open(&ps, o.server_pid) < 0) {
            fprintf(stderr, "loadgen: --server-pid %d: no such process\n", o.server_pid);
            return 2;
        }
        server_ok = 1;
    }

    memset(&rep, 0, sizeof rep);
    rep.o = &o;
    if (o.metrics_url) {
        if (probe_scrape(o.metrics_url, 2000, &rep.before, err, sizeof err) < 0) {
            fprintf(stderr, "loadgen: --metrics: %s\n", err);
            return 2;
        }
        rep.have_metrics = 1;
    }
    if (scenario_start(&scen, &o, &run.addr, run.addrlen, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 1;
    }
    scenario_wait_ready(&scen, o.timeout_ms > 5000 ? o.timeout_ms : 5000);

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    unsigned nt = o.threads;
    lg_thread_t *th = calloc(nt, sizeof *th);
    if (!th) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    run.start_us = time_now_us();
    run.window_us = run.start_us + o.warmup_us;
    run.end_us = o.duration_us ? run.window_us + o.duration_us : INT64_MAX;
    int measuring = 0;
    if (o.warmup_us == 0) {
        getrusage(RUSAGE_SELF, &ru0);
        server_sample(&ps, &server_ok);
        measuring = 1;
    }

    unsigned first = 0;
    for (unsigned i = 0; i < nt; i++) {
        th[i].run = &run;
        th[i].id = i;
        th[i].first_conn = first;
        th[i].nconns = o.connections / nt + (i < o.connections % nt);
        first += th[i].nconns;
        if (o.requests)
            th[i].quota = o.requests / nt + (i < o.requests % nt);
        if (o.requests && th[i].quota == 0) { /* -n smaller than -t */
            atomic_fetch_add(&threads_done, 1);
            th[i].nconns = 0;
            continue;
        }
        if (pthread_create(&th[i].tid, NULL, thread_main, &th[i]) != 0) {
            fprintf(stderr, "loadgen: cannot start thread %u\n", i);
            return 1;
        }
    }
    if (measuring && server_ok) {
        su0 = ps.user_s, ss0 = ps.system_s, vcsw0 = ps.vcsw, nvcsw0 = ps.nvcsw, rss0 = ps.rss_kb;
    }

    int tty = isatty(2);
    int64_t next_print = run.window_us + 1000000;
    uint64_t last_req = 0;
    while (atomic_load(&threads_done) < (int)nt) {
        usleep(20000);
        int64_t now = time_now_us();
        if (!measuring && now >= run.window_us) {
            getrusage(RUSAGE_SELF, &ru0);
            server_sample(&ps, &server_ok);
            su0 = ps.user_s, ss0 = ps.system_s, vcsw0 = ps.vcsw, nvcsw0 = ps.nvcsw;
            rss0 = ps.rss_kb;
            measuring = 1;
        }
        if (now >= next_print) {
            next_print += 1000000;
            server_sample(&ps, &server_ok);
            if (tty && !o.quiet) {
                uint64_t req = 0, errs = 0;
                for (unsigned i = 0; i < nt; i++) {
                    req += atomic_load_explicit(&th[i].live_requests, memory_order_relaxed);
                    errs += atomic_load_explicit(&th[i].live_errors, memory_order_relaxed);
                }
                fprintf(stderr, "\r[%4llds] %10llu req/s  %llu requests  %llu errors\033[K",
                        (long long)((now - run.window_us) / 1000000),
                        (unsigned long long)(req - last_req), (unsigned long long)req,
                        (unsigned long long)errs);
                last_req = req;
            }
        }
    }
    if (!measuring) {
        getrusage(RUSAGE_SELF, &ru0);
        measuring = 1;
    }
    getrusage(RUSAGE_SELF, &ru1);
    server_sample(&ps, &server_ok);
    if (tty && !o.quiet && last_req)
        fputc('\n', stderr);

    for (unsigned i = 0; i < nt; i++) {
        if (th[i].nconns)
            pthread_join(th[i].tid, NULL);
        if (th[i].rc < 0) {
            fprintf(stderr, "loadgen: thread %u: %s\n", i, strerror(-th[i].rc));
            return 1;
        }
        if (engine_stats_merge(&rep.st, &th[i].st, o.increment_keys) < 0) {
            fprintf(stderr, "loadgen: out of memory\n");
            return 1;
        }
        engine_stats_free(&th[i].st);
    }
    scenario_stop(&scen);
    rep.scen = scen.st;

    int64_t finish = rep.st.finish_us < run.end_us ? rep.st.finish_us : run.end_us;
    rep.duration_s = finish > run.window_us ? (double)(finish - run.window_us) / 1e6 : 0;
    rep.user_s = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
    rep.system_s = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);
    if (o.server_pid) {
        rep.have_server = 1;
        rep.server.user_s = ps.user_s - su0;
        rep.server.system_s = ps.system_s - ss0;
        rep.server.vcsw = ps.vcsw - vcsw0;
        rep.server.nvcsw = ps.nvcsw - nvcsw0;
        rep.server.peak_rss_kb = ps.hwm_kb;
        rep.server.rss_kb_start = rss0;
        rep.server.rss_kb_end = ps.rss_kb;
        rep.server.threads_max = ps.threads_max;
        procstat_close(&ps);
    }
    if (rep.have_metrics &&
        probe_scrape(o.metrics_url, 2000, &rep.after, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: --metrics after the run: %s\n", err);
        rep.have_metrics = 0;
    }

    rc = 0;
    if (!o.quiet)
        report_human(&rep, stdout);
    if (o.json_path && report_json(&rep, o.json_path, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        rc = 1;
    }
    if (o.hgrm_path && report_hgrm(&rep, o.hgrm_path, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        rc = 1;
    }
    engine_stats_free(&rep.st);
    probe_metrics_free(&rep.before);
    probe_metrics_free(&rep.after);
    workload_free(&w);
    opts_free(&o);
    free(th);
    curl_global_cleanup();
    return rc;
}
