/* report: a run's results as a wrk-like summary, as JSON (results/SCHEMA.md
 * describes it; schema_version 1) and as an HdrHistogram .hgrm file. */
#ifndef LOADGEN_REPORT_H
#define LOADGEN_REPORT_H

#include <jansson.h>
#include <stdio.h>

#include "engine.h"
#include "opts.h"
#include "probe.h"
#include "scenario.h"

typedef struct lg_server_usage {
    double user_s, system_s; /* over the measured window */
    uint64_t vcsw, nvcsw;    /* context switches over the window */
    long peak_rss_kb, rss_kb_start, rss_kb_end;
    long threads_max;
} lg_server_usage_t;

typedef struct lg_report {
    const lg_opts_t *o;
    lg_stats_t st;           /* every thread's, merged */
    double duration_s;       /* the measured window */
    double window_start_s;   /* when it opened, seconds since the epoch */
    double user_s, system_s; /* the load generator's own CPU over the window */
    int cpus;                /* the CPUs it may run on (0: unknown) */
    double cpus_busy_s;      /* their busy time over the window, whoever used it */
    int have_server;
    lg_server_usage_t server;
    const scen_stats_t *scen; /* SCEN_N entries */
    int have_metrics;
    probe_metrics_t before, after;
} lg_report_t;

/* A latency object of the JSON: the percentiles, max, mean, min, stdev,
 * count, and the whole histogram ("histogram": base64 of HdrHistogram's
 * compressed V2 encoding, hlog.h). NULL when out of memory. */
json_t *report_latency_json(const hist_t *h);

/* The wrk-like human summary. */
void report_human(const lg_report_t *r, FILE *f);

/* Write the JSON document to path ("-": stdout). Returns 0 or a negative
 * errno with err filled. */
int report_json(const lg_report_t *r, const char *path, char *err, size_t errlen);

/* Write the latency distribution (.hgrm). Returns 0 or a negative errno with
 * err filled. */
int report_hgrm(const lg_report_t *r, const char *path, char *err, size_t errlen);

/* Write the HdrHistogram interval log (--hlog): one interval a second of the
 * window, the corrected latency. Returns 0 or a negative errno with err
 * filled. */
int report_hlog(const lg_report_t *r, const char *path, char *err, size_t errlen);

#endif
