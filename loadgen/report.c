#include "report.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hlog.h"

static const double pcts[] = {50, 75, 90, 99, 99.9, 99.99};
static const char *const pct_names[] = {"p50", "p75", "p90", "p99", "p999", "p9999"};

/* The uncorrected histogram: -R keeps its own, closed loops have only one. */
static const hist_t *uncorrected(const lg_report_t *r)
{
    return r->o->rate > 0 ? &r->st.unc : &r->st.lat;
}

static uint64_t total_errors(const lg_stats_t *st)
{
    uint64_t n = 0;
    for (int k = 0; k < LG_ERR_N; k++)
        n += st->errors[k];
    return n;
}

/* "123us", "1.23ms", "2.50s" as wrk prints them. */
static const char *fmt_us(double us, char *b, size_t n)
{
    if (us < 1000)
        snprintf(b, n, "%.0fus", us);
    else if (us < 1e6)
        snprintf(b, n, "%.2fms", us / 1e3);
    else
        snprintf(b, n, "%.2fs", us / 1e6);
    return b;
}

static void latency_line(FILE *f, const char *label, const hist_t *h)
{
    char b[32];
    fprintf(f, "  %-12s", label);
    for (size_t i = 0; i < sizeof pcts / sizeof *pcts; i++)
        fprintf(f, " %9s", fmt_us((double)hist_percentile(h, pcts[i]), b, sizeof b));
    fprintf(f, " %9s", fmt_us((double)h->max, b, sizeof b));
    fprintf(f, " %9s\n", fmt_us(hist_mean(h), b, sizeof b));
}

void report_human(const lg_report_t *r, FILE *f)
{
    const lg_opts_t *o = r->o;
    const lg_stats_t *st = &r->st;
    fprintf(f, "Running %.2fs test @ %s\n", r->duration_s, o->target);
    fprintf(f, "  %u threads and %u connections", o->threads, o->connections);
    if (o->pipeline > 1)
        fprintf(f, ", pipeline %u", o->pipeline);
    if (o->rate > 0)
        fprintf(f, ", %.0f req/s target", o->rate);
    fprintf(f, "\n  %-12s %9s %9s %9s %9s %9s %9s %9s %9s\n", "Latency", "p50", "p75", "p90", "p99",
            "p99.9", "p99.99", "max", "mean");
    latency_line(f, o->rate > 0 ? "corrected" : "", &st->lat);
    if (o->rate > 0)
        latency_line(f, "uncorrected", &st->unc);
    fprintf(f, "  %llu requests in %.2fs, %llu errors\n", (unsigned long long)st->requests,
            r->duration_s, (unsigned long long)total_errors(st));
    for (int k = 0; k < LG_ERR_N; k++)
        if (st->errors[k])
            fprintf(f, "    %-10s %10llu  (first: %s)\n", lg_err_names[k],
                    (unsigned long long)st->errors[k], st->first[k]);
    /* Cut off by the end of a run, requests are younger than most answers;
     * one older than every answer is a latency the table could not show. */
    if (st->unfinished && (uint64_t)st->unfinished_oldest_us > st->lat.max) {
        char b[32];
        fprintf(f,
                "  %llu unanswered at the end, the oldest for %s: longer than any latency above\n",
                (unsigned long long)st->unfinished,
                fmt_us((double)st->unfinished_oldest_us, b, sizeof b));
    }
    fprintf(f, "Requests/sec: %12.2f\n",
            r->duration_s > 0 ? (double)st->requests / r->duration_s : 0);
    if (st->requests)
        fprintf(f, "Loadgen CPU:  %.2fs user %.2fs sys, %.2f us/request, %s engine\n", r->user_s,
                r->system_s, (r->user_s + r->system_s) * 1e6 / (double)st->requests,
                o->engine == LG_ENGINE_URING ? "io_uring" : "epoll");
    if (r->have_server)
        fprintf(f,
                "Server CPU:   %.2fs user %.2fs sys, %.2f us/request, %llu+%llu ctx switches, "
                "peak RSS %ld kB, %ld threads max\n",
                r->server.user_s, r->server.system_s,
                st->requests ? (r->server.user_s + r->server.system_s) * 1e6 / (double)st->requests
                             : 0,
                (unsigned long long)r->server.vcsw, (unsigned long long)r->server.nvcsw,
                r->server.peak_rss_kb, r->server.threads_max);
    for (int k = 0; k < SCEN_N; k++)
        if (r->scen[k].requested)
            fprintf(f,
                    "Scenario %-12s %llu requested, %llu open, %llu failed, %llu closed by the "
                    "server\n",
                    scenario_names[k], (unsigned long long)r->scen[k].requested,
                    (unsigned long long)r->scen[k].open, (unsigned long long)r->scen[k].failed,
                    (unsigned long long)r->scen[k].closed);
    if (o->increment_keys)
        fprintf(f, "Increments:   %llu acknowledged, %llu not acknowledged\n",
                (unsigned long long)st->acked_requests, (unsigned long long)st->unacked_requests);
}

/* A histogram's base64 encoding as a JSON string; null when out of memory
 * (a reader then refuses to merge the file rather than merge it wrongly). */
static json_t *hist_b64_json(const hist_t *h)
{
    char *b64 = hlog_encode_b64(h);
    json_t *j = b64 ? json_string(b64) : json_null();
    free(b64);
    return j;
}

json_t *report_latency_json(const hist_t *h)
{
    json_t *j = json_object();
    for (size_t i = 0; i < sizeof pcts / sizeof *pcts; i++)
        json_object_set_new(j, pct_names[i], json_integer((json_int_t)hist_percentile(h, pcts[i])));
    json_object_set_new(j, "max", json_integer((json_int_t)h->max));
    json_object_set_new(j, "mean", json_real(hist_mean(h)));
    json_object_set_new(j, "min", json_integer((json_int_t)(h->count ? h->min : 0)));
    json_object_set_new(j, "stdev", json_real(hist_stddev(h)));
    json_object_set_new(j, "count", json_integer((json_int_t)h->count));
    json_object_set_new(j, "histogram", hist_b64_json(h));
    return j;
}

static double per_request(double total, uint64_t requests, double scale)
{
    return requests ? total * scale / (double)requests : 0;
}

static json_t *config_json(const lg_report_t *r)
{
    const lg_opts_t *o = r->o;
    json_t *c = json_object();
    json_object_set_new(c, "target", json_string(o->target));
    json_object_set_new(c, "protocol", json_string(o->proto == LG_HTTP ? "http" : "line"));
    json_object_set_new(c, "connections", json_integer(o->connections));
    json_object_set_new(c, "threads", json_integer(o->threads));
    json_object_set_new(c, "duration_s",
                        o->duration_us ? json_real((double)o->duration_us / 1e6) : json_null());
    json_object_set_new(c, "requests",
                        o->requests ? json_integer((json_int_t)o->requests) : json_null());
    json_object_set_new(c, "warmup_s", json_real((double)o->warmup_us / 1e6));
    json_object_set_new(c, "rate", o->rate > 0 ? json_real(o->rate) : json_null());
    json_object_set_new(c, "pipeline", json_integer(o->pipeline));
    json_object_set_new(c, "timeout_ms", json_integer(o->timeout_ms));
    json_object_set_new(c, "engine", json_string(o->engine == LG_ENGINE_URING ? "uring" : "epoll"));
    if (o->proto == LG_LINE) {
        json_t *mix = json_array();
        for (size_t i = 0; i < o->nmix; i++) {
            json_t *e = json_object();
            json_object_set_new(e, "command", json_string(o->mix[i].cmd));
            json_object_set_new(e, "weight", json_integer(o->mix[i].weight));
            json_array_append_new(mix, e);
        }
        json_object_set_new(c, "mix", mix);
    } else {
        json_object_set_new(c, "mix", json_null());
    }
    json_object_set_new(c, "method", json_string(o->method));
    json_t *paths = json_array();
    for (size_t i = 0; o->proto == LG_HTTP && i < o->npaths; i++)
        json_array_append_new(paths, json_string(o->paths[i]));
    json_object_set_new(c, "paths", paths);
    json_object_set_new(c, "idle", json_integer(o->idle));
    json_object_set_new(c, "slowloris", json_integer(o->slowloris));
    json_object_set_new(c, "slow_readers", json_integer(o->slow_readers));
    json_object_set_new(c, "increment",
                        o->increment_keys ? json_integer(o->increment_keys) : json_null());
    json_object_set_new(c, "server_pid", o->server_pid ? json_integer(o->server_pid) : json_null());
    json_object_set_new(c, "seed", json_integer((json_int_t)(o->seed & INT64_MAX)));
    return c;
}

/* The error counts by class into j: "errors", "errors_total" and the first
 * message of each class, "errors_first". */
static void errors_json(json_t *j, const lg_stats_t *st)
{
    json_t *err = json_object(), *first = json_object();
    for (int k = 0; k < LG_ERR_N; k++) {
        json_object_set_new(err, lg_err_names[k], json_integer((json_int_t)st->errors[k]));
        if (st->first[k][0])
            json_object_set_new(first, lg_err_names[k], json_string(st->first[k]));
    }
    json_object_set_new(j, "errors", err);
    json_object_set_new(j, "errors_total", json_integer((json_int_t)total_errors(st)));
    json_object_set_new(j, "errors_first", first);
}

static json_t *per_second_json(const persec_t *secs)
{
    json_t *ps = json_array();
    hist_t *h = malloc(sizeof *h); /* 26 KB: not on the stack */
    for (size_t i = 0; i < secs->n; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "t", json_integer((json_int_t)i));
        json_object_set_new(e, "requests", json_integer((json_int_t)secs->v[i].requests));
        json_object_set_new(e, "errors", json_integer((json_int_t)secs->v[i].errors));
        json_object_set_new(e, "p99_us", json_integer((json_int_t)persec_p99(&secs->v[i])));
        if (h) {
            persec_to_hist(&secs->v[i], h);
            json_object_set_new(e, "histogram", hist_b64_json(h));
        }
        json_array_append_new(ps, e);
    }
    free(h);
    return ps;
}

static json_t *loadgen_cpu_json(const lg_report_t *r)
{
    json_t *lc = json_object();
    json_object_set_new(lc, "user_s", json_real(r->user_s));
    json_object_set_new(lc, "system_s", json_real(r->system_s));
    json_object_set_new(lc, "cpu_per_request_us",
                        json_real(per_request(r->user_s + r->system_s, r->st.requests, 1e6)));
    if (r->cpus > 0) {
        json_object_set_new(lc, "cpus", json_integer(r->cpus));
        json_object_set_new(lc, "cpus_busy_s", json_real(r->cpus_busy_s));
    }
    return lc;
}

/* The server process's figures (--server-pid). */
static json_t *server_json(const lg_server_usage_t *s, uint64_t requests)
{
    json_t *sv = json_object();
    json_object_set_new(sv, "user_s", json_real(s->user_s));
    json_object_set_new(sv, "system_s", json_real(s->system_s));
    json_object_set_new(sv, "cpu_per_request_us",
                        json_real(per_request(s->user_s + s->system_s, requests, 1e6)));
    json_object_set_new(sv, "voluntary_ctxt_switches", json_integer((json_int_t)s->vcsw));
    json_object_set_new(sv, "nonvoluntary_ctxt_switches", json_integer((json_int_t)s->nvcsw));
    json_object_set_new(sv, "ctxt_switches_per_request",
                        json_real(per_request((double)(s->vcsw + s->nvcsw), requests, 1)));
    json_object_set_new(sv, "peak_rss_kb", json_integer(s->peak_rss_kb));
    json_object_set_new(sv, "threads_max", json_integer(s->threads_max));
    json_object_set_new(sv, "rss_kb_start", json_integer(s->rss_kb_start));
    json_object_set_new(sv, "rss_kb_end", json_integer(s->rss_kb_end));
    return sv;
}

/* The extra connections of --idle, --slowloris and --slow-readers. */
static json_t *scenarios_json(const scen_stats_t *scen)
{
    json_t *sc = json_object();
    for (int k = 0; k < SCEN_N; k++) {
        const scen_stats_t *s = &scen[k];
        json_t *e = json_object();
        json_object_set_new(e, "requested", json_integer((json_int_t)s->requested));
        json_object_set_new(e, "open", json_integer((json_int_t)s->open));
        json_object_set_new(e, "failed", json_integer((json_int_t)s->failed));
        json_object_set_new(e, "closed", json_integer((json_int_t)s->closed));
        json_object_set_new(e, "opened", json_integer((json_int_t)s->opened));
        if (k != SCEN_IDLE)
            json_object_set_new(e, k == SCEN_SLOWLORIS ? "bytes_sent" : "bytes_read",
                                json_integer((json_int_t)s->bytes));
        json_object_set_new(sc, scenario_names[k], e);
    }
    return sc;
}

/* --increment: the sums per key, acknowledged or not. */
static json_t *increment_json(const lg_stats_t *st, unsigned keys)
{
    json_t *in = json_object(), *ack = json_object(), *unack = json_object();
    char key[24];
    for (unsigned k = 0; k < keys; k++) {
        snprintf(key, sizeof key, "k%u", k);
        if (st->acked && st->acked[k])
            json_object_set_new(ack, key, json_integer(st->acked[k]));
        if (st->unacked && st->unacked[k])
            json_object_set_new(unack, key, json_integer(st->unacked[k]));
    }
    json_object_set_new(in, "keys", json_integer(keys));
    json_object_set_new(in, "acked", ack);
    json_object_set_new(in, "unacked", unack);
    json_object_set_new(in, "acked_requests", json_integer((json_int_t)st->acked_requests));
    json_object_set_new(in, "unacked_requests", json_integer((json_int_t)st->unacked_requests));
    return in;
}

/* --metrics: counters' increase over the run; gauges read the same way. */
static json_t *metrics_json(const lg_report_t *r)
{
    json_t *m = json_object();
    for (size_t i = 0; i < r->after.n; i++) {
        double b = probe_metric(&r->before, r->after.names[i]);
        json_object_set_new(m, r->after.names[i],
                            json_real(r->after.values[i] - (isnan(b) ? 0 : b)));
    }
    return m;
}

/* The whole JSON document, its keys in the order of the schema. */
static json_t *build(const lg_report_t *r)
{
    const lg_stats_t *st = &r->st;
    json_t *j = json_object();
    json_object_set_new(j, "schema_version", json_integer(1));
    json_object_set_new(j, "requests", json_integer((json_int_t)st->requests));
    json_object_set_new(j, "rps",
                        json_real(r->duration_s > 0 ? (double)st->requests / r->duration_s : 0));
    json_object_set_new(j, "duration_s", json_real(r->duration_s));
    json_object_set_new(j, "window_start_ms",
                        json_integer((json_int_t)llround(r->window_start_s * 1e3)));
    json_object_set_new(
        j, "window_end_ms",
        json_integer((json_int_t)llround((r->window_start_s + r->duration_s) * 1e3)));
    json_object_set_new(j, "latency_us", report_latency_json(&st->lat));
    json_object_set_new(j, "latency_uncorrected_us", report_latency_json(uncorrected(r)));
    errors_json(j, st);
    json_t *u = json_object();
    json_object_set_new(u, "requests", json_integer((json_int_t)st->unfinished));
    json_object_set_new(u, "oldest_us", json_integer((json_int_t)st->unfinished_oldest_us));
    json_object_set_new(j, "unfinished", u);
    json_object_set_new(j, "config", config_json(r));
    json_object_set_new(j, "per_second", per_second_json(&st->secs));
    json_object_set_new(j, "loadgen_cpu", loadgen_cpu_json(r));
    if (r->have_server)
        json_object_set_new(j, "server", server_json(&r->server, st->requests));
    json_object_set_new(j, "scenarios", scenarios_json(r->scen));
    if (r->o->increment_keys)
        json_object_set_new(j, "increment", increment_json(st, r->o->increment_keys));
    if (r->have_metrics)
        json_object_set_new(j, "metrics_delta", metrics_json(r));
    return j;
}

int report_json(const lg_report_t *r, const char *path, char *err, size_t errlen)
{
    json_t *j = build(r);
    int rc = 0;
    size_t flags = JSON_INDENT(2) | JSON_REAL_PRECISION(10);
    if (strcmp(path, "-") == 0) {
        rc = json_dumpf(j, stdout, flags);
        fputc('\n', stdout);
    } else {
        rc = json_dump_file(j, path, flags);
    }
    json_decref(j);
    if (rc != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -EIO;
    }
    return 0;
}

int report_hgrm(const lg_report_t *r, const char *path, char *err, size_t errlen)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -errno;
    }
    int rc = hist_write_hgrm(&r->st.lat, f);
    if (f != stdout && fclose(f) != 0)
        rc = -EIO;
    if (rc < 0)
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(EIO));
    return rc;
}

int report_hlog(const lg_report_t *r, const char *path, char *err, size_t errlen)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    hist_t *h = malloc(sizeof *h);
    int rc = -ENOMEM;
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        free(h);
        return -errno;
    }
    if (!h)
        goto err;
    const persec_t *secs = &r->st.secs;
    rc = hlog_write_header(f, r->window_start_s);
    /* Whole seconds, the last one cut where the window ended. */
    for (size_t i = 0; rc == 0 && i < secs->n; i++) {
        double len = r->duration_s - (double)i;
        persec_to_hist(&secs->v[i], h);
        rc = hlog_write_interval(f, (double)i, len < 1 ? (len > 0 ? len : 0) : 1, h);
    }
err:
    free(h);
    if (f != stdout && fclose(f) != 0 && rc == 0)
        rc = -EIO;
    if (rc < 0)
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(-rc));
    return rc;
}
