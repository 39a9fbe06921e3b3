#include "merge.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hlog.h"
#include "persec.h"
#include "report.h"

#define USAGE "usage: loadgen merge OUT.json IN.json... | loadgen merge OUT.hlog IN.hlog..."

/* One interval of one agent (a JSON per_second entry or a log's line), its
 * latencies kept sparse (lg_sec_t's pairs): a long log does not cost a
 * whole histogram per second. */
typedef struct piece {
    double start_s, len_s; /* absolute start, seconds since the epoch */
    lg_sec_t sec;          /* requests, errors (JSON only) and latencies */
} piece_t;

typedef struct merge {
    piece_t *v;
    size_t n, cap;
    hist_t *scratch; /* one interval being summed */
    char err[512];   /* why it failed: one line */
} merge_t;

static int fail(merge_t *m, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Note why the merge failed, naming the file. Returns -EINVAL. */
static int fail(merge_t *m, const char *file, const char *fmt, ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(m->err, sizeof m->err, "%s: %s", file, why);
    return -EINVAL;
}

static int piece_add(merge_t *m, double start, double len, uint64_t req, uint64_t errs,
                     const hist_t *h)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 64;
        piece_t *v = realloc(m->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        m->v = v;
        m->cap = cap;
    }
    piece_t *p = &m->v[m->n];
    memset(p, 0, sizeof *p);
    p->start_s = start;
    p->len_s = len;
    p->sec.requests = req;
    p->sec.errors = errs;
    if (persec_add_hist(&p->sec, h) < 0)
        return -ENOMEM;
    m->n++;
    return 0;
}

static int by_start(const void *a, const void *b)
{
    double x = ((const piece_t *)a)->start_s, y = ((const piece_t *)b)->start_s;
    return x < y ? -1 : x > y;
}

/* One merged interval: slot `slot` of width w from t0, summed over the
 * pieces that fall in it, in m->scratch. */
typedef int (*slot_fn)(void *ctx, int64_t slot, double len, const lg_sec_t *sum, const hist_t *h);

/* Sort the pieces and hand fn each slot: the pieces whose start rounds to
 * the same multiple of w after t0 (agents started together, so their
 * seconds line up within milliseconds) are added up. Returns 0 or fn's. */
static int for_each_slot(merge_t *m, double t0, double w, slot_fn fn, void *ctx)
{
    qsort(m->v, m->n, sizeof *m->v, by_start);
    for (size_t i = 0; i < m->n;) {
        int64_t slot = llround((m->v[i].start_s - t0) / w);
        lg_sec_t sum = {0};
        double len = 0;
        hist_reset(m->scratch);
        for (; i < m->n && llround((m->v[i].start_s - t0) / w) == slot; i++) {
            const lg_sec_t *s = &m->v[i].sec;
            sum.requests += s->requests;
            sum.errors += s->errors;
            for (uint32_t k = 0; k < s->n; k++) {
                m->scratch->counts[s->pairs[2 * k]] += s->pairs[2 * k + 1];
                m->scratch->count += s->pairs[2 * k + 1];
            }
            if (m->v[i].len_s > len)
                len = m->v[i].len_s;
        }
        int rc = fn(ctx, slot, len, &sum, m->scratch);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- interval logs ---- */

typedef struct log_out {
    FILE *f;
    double w;
} log_out_t;

static int log_piece(void *ctx, double start, double len, const hist_t *h, char *err, size_t errlen)
{
    if (piece_add(ctx, start, len, 0, 0, h) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static int log_slot(void *ctx, int64_t slot, double len, const lg_sec_t *sum, const hist_t *h)
{
    log_out_t *o = ctx;
    (void)sum;
    return hlog_write_interval(o->f, (double)slot * o->w, len, h);
}

/* Read every log, then write OUT: StartTime and BaseTime the earliest
 * interval's start, one interval per slot of the longest interval's width.
 * Returns the exit status. */
static int merge_logs(merge_t *m, const char *out, char **in, int nin)
{
    double first = NAN;
    for (int i = 0; i < nin; i++) {
        FILE *f = fopen(in[i], "r");
        char why[300];
        double start;
        if (!f) {
            fail(m, in[i], "%s", strerror(errno));
            return 2;
        }
        int rc = hlog_read(f, log_piece, m, &start, why, sizeof why);
        fclose(f);
        if (rc < 0) {
            fail(m, in[i], "%s", why);
            return 2;
        }
        if (isnan(start)) {
            fail(m, in[i], "no intervals: not an HdrHistogram interval log");
            return 2;
        }
    }
    double w = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (isnan(first) || m->v[i].start_s < first)
            first = m->v[i].start_s;
        if (m->v[i].len_s > w)
            w = m->v[i].len_s;
    }
    if (w <= 0)
        w = 1;
    log_out_t o = {.f = strcmp(out, "-") == 0 ? stdout : fopen(out, "w"), .w = w};
    if (!o.f) {
        fail(m, out, "cannot write: %s", strerror(errno));
        return 1;
    }
    int rc = hlog_write_header(o.f, first);
    if (rc == 0)
        rc = for_each_slot(m, first, w, log_slot, &o);
    if (o.f != stdout && fclose(o.f) != 0 && rc == 0)
        rc = -EIO;
    if (rc < 0) {
        fail(m, out, "cannot write: %s", strerror(-rc));
        return 1;
    }
    return 0;
}

/* ---- JSON results ---- */

/* dst += src for every number of src, objects recursed into (integers stay
 * integers). */
static void sum_numbers(json_t *dst, json_t *src)
{
    const char *key;
    json_t *v;
    json_object_foreach(src, key, v)
    {
        json_t *d = json_object_get(dst, key);
        if (json_is_object(v)) {
            if (!json_is_object(d))
                json_object_set_new(dst, key, d = json_object());
            sum_numbers(d, v);
        } else if (json_is_integer(v) && (!d || json_is_integer(d))) {
            json_object_set_new(dst, key,
                                json_integer(json_integer_value(v) + json_integer_value(d)));
        } else if (json_is_number(v)) {
            json_object_set_new(dst, key, json_real(json_number_value(v) + json_number_value(d)));
        }
    }
}

/* The histogram of latency object `name` of j into h, with the JSON's own
 * exact min, max, mean and deviation (the buckets only bound them).
 * Returns 0 or fail()'s. */
static int read_latency(merge_t *m, const char *file, json_t *j, const char *name, hist_t *h)
{
    json_t *l = json_object_get(j, name);
    json_t *b64 = json_object_get(l, "histogram");
    char why[300];
    if (!json_is_string(b64))
        return fail(m, file, "no %s.histogram (written by an older loadgen?)", name);
    if (hlog_decode_b64(json_string_value(b64), json_string_length(b64), h, why, sizeof why) < 0)
        return fail(m, file, "%s.histogram: %s", name, why);
    json_t *count = json_object_get(l, "count");
    if (json_is_integer(count) && (uint64_t)json_integer_value(count) != h->count)
        return fail(m, file, "%s: count %lld but the histogram holds %llu", name,
                    (long long)json_integer_value(count), (unsigned long long)h->count);
    if (h->count) {
        double mean = json_number_value(json_object_get(l, "mean"));
        double sd = json_number_value(json_object_get(l, "stdev"));
        h->min = (uint64_t)json_integer_value(json_object_get(l, "min"));
        h->max = (uint64_t)json_integer_value(json_object_get(l, "max"));
        h->sum = mean * (double)h->count;
        h->sumsq = (sd * sd + mean * mean) * (double)h->count;
    }
    return 0;
}

/* Each per_second entry of j becomes a piece. Returns 0 or fail()'s. */
static int read_seconds(merge_t *m, const char *file, json_t *j, double start)
{
    json_t *ps = json_object_get(j, "per_second"), *e;
    size_t i;
    char why[300];
    if (!json_is_array(ps))
        return fail(m, file, "no per_second list");
    json_array_foreach(ps, i, e)
    {
        json_t *t = json_object_get(e, "t"), *b64 = json_object_get(e, "histogram");
        if (!json_is_integer(t) || !json_is_string(b64))
            return fail(m, file, "per_second[%zu]: no t or histogram (an older loadgen?)", i);
        if (hlog_decode_b64(json_string_value(b64), json_string_length(b64), m->scratch, why,
                            sizeof why) < 0)
            return fail(m, file, "per_second[%zu].histogram: %s", i, why);
        if (piece_add(m, start + (double)json_integer_value(t), 1,
                      (uint64_t)json_integer_value(json_object_get(e, "requests")),
                      (uint64_t)json_integer_value(json_object_get(e, "errors")), m->scratch) < 0)
            return fail(m, file, "out of memory");
    }
    return 0;
}

static int json_slot(void *ctx, int64_t slot, double len, const lg_sec_t *sum, const hist_t *h)
{
    json_t *e = json_object();
    lg_sec_t sparse = {0};
    (void)len;
    if (persec_add_hist(&sparse, h) < 0)
        return -ENOMEM;
    json_object_set_new(e, "t", json_integer(slot));
    json_object_set_new(e, "requests", json_integer((json_int_t)sum->requests));
    json_object_set_new(e, "errors", json_integer((json_int_t)sum->errors));
    json_object_set_new(e, "p99_us", json_integer((json_int_t)persec_p99(&sparse)));
    char *b64 = hlog_encode_b64(h);
    json_object_set_new(e, "histogram", b64 ? json_string(b64) : json_null());
    free(b64);
    free(sparse.pairs);
    json_array_append_new(ctx, e);
    return b64 ? 0 : -ENOMEM;
}

/* What the merged document sums, run by run. */
typedef struct totals {
    hist_t lat, unc;
    json_int_t requests, unfinished, unfinished_oldest_us;
    double rps, start, end;
    json_t *errors, *first, *config, *cpu, *scen, *incr, *files;
    int rate_null, requests_null, no_incr;
} totals_t;

/* Add one result file to t. Returns 0 or fail()'s. */
static int add_result(merge_t *m, totals_t *t, const char *file, json_t *j, hist_t *h)
{
    json_t *req = json_object_get(j, "requests"), *rps = json_object_get(j, "rps");
    json_t *ws = json_object_get(j, "window_start_ms"), *dur = json_object_get(j, "duration_s");
    json_t *cfg = json_object_get(j, "config");
    if (!json_is_object(j) || !json_is_integer(req) || !json_is_number(rps) ||
        !json_is_number(dur) || !json_is_object(cfg))
        return fail(m, file, "not a loadgen JSON result");
    if (!json_is_integer(ws))
        return fail(m, file, "no window_start_ms (written by an older loadgen?)");
    double start = (double)json_integer_value(ws) / 1e3;
    int rc = read_latency(m, file, j, "latency_us", h);
    if (rc < 0)
        return rc;
    hist_merge(&t->lat, h);
    if ((rc = read_latency(m, file, j, "latency_uncorrected_us", h)) < 0)
        return rc;
    hist_merge(&t->unc, h);
    if ((rc = read_seconds(m, file, j, start)) < 0)
        return rc;
    t->requests += json_integer_value(req);
    t->rps += json_number_value(rps);
    /* Absent from an older loadgen's file: that agent counted none. */
    json_t *u = json_object_get(j, "unfinished");
    json_int_t n = json_integer_value(json_object_get(u, "requests"));
    json_int_t oldest = json_integer_value(json_object_get(u, "oldest_us"));
    if (u && (!json_is_integer(json_object_get(u, "requests")) ||
              !json_is_integer(json_object_get(u, "oldest_us")) || n < 0 || oldest < 0))
        return fail(m, file, "unfinished is not {requests, oldest_us} of counts");
    t->unfinished += n;
    if (oldest > t->unfinished_oldest_us)
        t->unfinished_oldest_us = oldest;
    if (json_array_size(t->files) == 0 || start < t->start)
        t->start = start;
    if (start + json_number_value(dur) > t->end)
        t->end = start + json_number_value(dur);
    json_t *errs = json_object_get(j, "errors"), *first = json_object_get(j, "errors_first"), *v;
    const char *key;
    if (json_is_object(errs))
        sum_numbers(t->errors, errs);
    json_object_foreach(first, key, v)
    {
        if (!json_object_get(t->first, key)) /* the first agent's that has one */
            json_object_set(t->first, key, v);
    }
    t->rate_null |= !json_is_number(json_object_get(cfg, "rate"));
    t->requests_null |= !json_is_integer(json_object_get(cfg, "requests"));
    if (!t->config) {
        t->config = json_deep_copy(cfg);
    } else {
        json_t *sum = json_object();
        json_object_set(sum, "connections", json_object_get(cfg, "connections"));
        json_object_set(sum, "threads", json_object_get(cfg, "threads"));
        json_object_set(sum, "rate", json_object_get(cfg, "rate"));
        json_object_set(sum, "requests", json_object_get(cfg, "requests"));
        sum_numbers(t->config, sum);
        json_decref(sum);
    }
    if (json_is_object(json_object_get(j, "loadgen_cpu")))
        sum_numbers(t->cpu, json_object_get(j, "loadgen_cpu"));
    if (json_is_object(json_object_get(j, "scenarios")))
        sum_numbers(t->scen, json_object_get(j, "scenarios"));
    if (json_is_object(json_object_get(j, "increment")))
        sum_numbers(t->incr, json_object_get(j, "increment"));
    else
        t->no_incr = 1;
    json_array_append_new(t->files, json_string(file));
    return 0;
}

/* The merged document, keys in the schema's order. */
static json_t *build(totals_t *t, json_t *secs)
{
    json_t *j = json_object();
    json_object_set_new(j, "schema_version", json_integer(1));
    json_object_set_new(j, "requests", json_integer(t->requests));
    json_object_set_new(j, "rps", json_real(t->rps));
    json_object_set_new(j, "duration_s", json_real(t->end - t->start));
    json_object_set_new(j, "window_start_ms", json_integer((json_int_t)llround(t->start * 1e3)));
    json_object_set_new(j, "window_end_ms", json_integer((json_int_t)llround(t->end * 1e3)));
    json_object_set_new(j, "latency_us", report_latency_json(&t->lat));
    json_object_set_new(j, "latency_uncorrected_us", report_latency_json(&t->unc));
    json_object_set(j, "errors", t->errors);
    json_int_t total = 0;
    const char *key;
    json_t *v;
    json_object_foreach(t->errors, key, v) total += json_integer_value(v);
    json_object_set_new(j, "errors_total", json_integer(total));
    json_object_set(j, "errors_first", t->first);
    json_t *u = json_object();
    json_object_set_new(u, "requests", json_integer(t->unfinished));
    json_object_set_new(u, "oldest_us", json_integer(t->unfinished_oldest_us));
    json_object_set_new(j, "unfinished", u);
    if (t->rate_null)
        json_object_set_new(t->config, "rate", json_null());
    if (t->requests_null)
        json_object_set_new(t->config, "requests", json_null());
    json_object_set(j, "config", t->config);
    json_object_set(j, "per_second", secs);
    double cpu = json_number_value(json_object_get(t->cpu, "user_s")) +
                 json_number_value(json_object_get(t->cpu, "system_s"));
    json_object_set_new(t->cpu, "cpu_per_request_us",
                        json_real(t->requests ? cpu * 1e6 / (double)t->requests : 0));
    json_object_set(j, "loadgen_cpu", t->cpu);
    json_object_set(j, "scenarios", t->scen);
    if (!t->no_incr) {
        /* The key count is the agents' (config.increment), not their sum. */
        json_object_set(t->incr, "keys", json_object_get(t->config, "increment"));
        json_object_set(j, "increment", t->incr);
    }
    json_t *mg = json_object();
    json_object_set_new(mg, "agents", json_integer((json_int_t)json_array_size(t->files)));
    json_object_set(mg, "files", t->files);
    json_object_set_new(j, "merged", mg);
    return j;
}

/* Read every result, then write OUT. Returns the exit status. */
static int merge_results(merge_t *m, const char *out, char **in, int nin)
{
    totals_t *t = calloc(1, sizeof *t);
    hist_t *h = malloc(sizeof *h);
    json_t *secs = json_array(), *doc = NULL;
    int status = 2;
    if (!t || !h) {
        snprintf(m->err, sizeof m->err, "out of memory");
        goto err;
    }
    t->errors = json_object(), t->first = json_object(), t->cpu = json_object();
    t->scen = json_object(), t->incr = json_object(), t->files = json_array();
    for (int i = 0; i < nin; i++) {
        json_error_t je;
        json_t *j = json_load_file(in[i], 0, &je);
        if (!j) {
            fail(m, in[i], "%s", je.line > 0 ? je.text : strerror(errno));
            goto err;
        }
        int rc = add_result(m, t, in[i], j, h);
        json_decref(j);
        if (rc < 0)
            goto err;
    }
    if (for_each_slot(m, t->start, 1, json_slot, secs) < 0) {
        snprintf(m->err, sizeof m->err, "out of memory");
        goto err;
    }
    doc = build(t, secs);
    size_t flags = JSON_INDENT(2) | JSON_REAL_PRECISION(10);
    status = 1;
    if (strcmp(out, "-") == 0 ? json_dumpf(doc, stdout, flags) : json_dump_file(doc, out, flags)) {
        fail(m, out, "cannot write: %s", strerror(errno));
        goto err;
    }
    status = 0;
err:
    if (t) {
        json_decref(t->errors), json_decref(t->first), json_decref(t->config);
        json_decref(t->cpu), json_decref(t->scen), json_decref(t->incr), json_decref(t->files);
    }
    json_decref(secs);
    json_decref(doc);
    free(t);
    free(h);
    return status;
}

/* ---- the subcommand ---- */

/* Is the file a JSON document (its first non-blank byte '{')? -1 when it
 * cannot be read. */
static int is_json(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int c;
    while ((c = fgetc(f)) == ' ' || c == '\n' || c == '\r' || c == '\t')
        ;
    int err = ferror(f);
    fclose(f);
    return err ? -1 : c == '{';
}

int merge_main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("%s\n  Adds the agents' histograms bucket by bucket; sums counts, errors and "
               "rates;\n  the window is the union of theirs. OUT may be - (stdout).\n",
               USAGE);
        return 0;
    }
    for (int i = 1; i < argc; i++)
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "loadgen: merge: unknown option '%s' (%s)\n", argv[i], USAGE);
            return 2;
        }
    if (argc < 3) {
        fprintf(stderr, "loadgen: merge: %s\n", USAGE);
        return 2;
    }
    merge_t m = {0};
    int kind = -1, status = 2;
    for (int i = 2; i < argc; i++) {
        int k = is_json(argv[i]);
        if (k < 0) {
            fail(&m, argv[i], "%s", strerror(errno));
            goto out;
        }
        if (kind >= 0 && k != kind) {
            fail(&m, argv[i], "JSON results and interval logs cannot be merged together");
            goto out;
        }
        kind = k;
    }
    if (!(m.scratch = malloc(sizeof *m.scratch))) {
        snprintf(m.err, sizeof m.err, "out of memory");
        goto out;
    }
    status = kind ? merge_results(&m, argv[1], argv + 2, argc - 2)
                  : merge_logs(&m, argv[1], argv + 2, argc - 2);
out:
    if (status)
        fprintf(stderr, "loadgen: merge: %s\n", m.err);
    for (size_t i = 0; i < m.n; i++)
        free(m.v[i].sec.pairs);
    free(m.v);
    free(m.scratch);
    return status;
}
