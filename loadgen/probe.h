/* probe: the checks around a run, where a complete client is right and the
 * hot path is not: is the target up (libcurl for HTTP, a TCP connect for the
 * line protocol), and what does its Prometheus /metrics say before and after. */
#ifndef LOADGEN_PROBE_H
#define LOADGEN_PROBE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "opts.h"

/* Is the target accepting? Tries until it answers or wait_ms passed (at
 * least once, each attempt bounded by timeout_ms). HTTP targets must answer an
 * HTTP request (any status); line-protocol targets must accept a connection.
 * Returns 0, or a negative errno with a one-line reason in err. */
int probe_ready(const lg_opts_t *o, const struct sockaddr_storage *addr, socklen_t addrlen,
                int64_t wait_ms, int64_t timeout_ms, char *err, size_t errlen);

/* A scraped Prometheus text page: sample name (with labels) -> value. */
typedef struct probe_metrics {
    char **names;
    double *values;
    size_t n, cap;
} probe_metrics_t;

/* GET url and parse its Prometheus text. Returns 0 or a negative errno with
 * err filled. */
int probe_scrape(const char *url, int64_t timeout_ms, probe_metrics_t *m, char *err, size_t errlen);

/* Parse Prometheus text format (comments skipped) into m. Returns 0 or -ENOMEM. */
int probe_parse_metrics(const char *text, probe_metrics_t *m);

/* The value of sample `name` in m, or NAN when absent. */
double probe_metric(const probe_metrics_t *m, const char *name);

void probe_metrics_free(probe_metrics_t *m);

#endif
