#include "opts.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/opt.h"
#include "core/proto.h"

int opts_parse_duration(const char *s, int64_t *us)
{
    return opt_parse_duration(s, us);
}

/* A whole decimal number in [min, max]. */
static int parse_num(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v;
    if (!s || proto_parse_u64(s, strlen(s), max, &v) < 0 || v < min)
        return -EINVAL;
    *out = v;
    return 0;
}

int opts_parse_target(lg_opts_t *o, const char *target, char *err, size_t errlen)
{
    const char *p;
    if (strncasecmp(target, "http://", 7) == 0) {
        o->proto = LG_HTTP;
        p = target + 7;
    } else if (strncasecmp(target, "tcp://", 6) == 0) {
        o->proto = LG_LINE;
        p = target + 6;
    } else {
        snprintf(err, errlen, "bad target '%s': expected http://HOST:PORT/PATH or tcp://HOST:PORT",
                 target);
        return -EINVAL;
    }
    const char *hs = p, *he;
    if (*p == '[') { /* [::1]:8090 */
        he = strchr(p, ']');
        if (!he)
            goto bad;
        hs = p + 1;
        p = he + 1;
    } else {
        while (*p && *p != ':' && *p != '/')
            p++;
        he = p;
    }
    size_t hlen = (size_t)(he - hs);
    if (hlen == 0 || hlen >= sizeof o->host)
        goto bad;
    memcpy(o->host, hs, hlen);
    o->host[hlen] = '\0';

    if (*p == ':') {
        const char *ps = ++p;
        while (isdigit((unsigned char)*p))
            p++;
        uint64_t port;
        if (proto_parse_u64(ps, (size_t)(p - ps), 65535, &port) < 0 || port == 0)
            goto bad;
        o->port = (int)port;
    } else {
        o->port = o->proto == LG_HTTP ? 80 : 8090;
    }
    if (o->proto == LG_LINE) {
        if (*p && strcmp(p, "/") != 0)
            goto bad;
        return 0;
    }
    if (*p && *p != '/')
        goto bad;
    const char *path = *p ? p : "/";
    if (strlen(path) >= sizeof o->url_path)
        goto bad;
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
            goto bad;
    strcpy(o->url_path, path);
    o->paths[0] = o->url_path;
    if (o->npaths == 0)
        o->npaths = 1;
    return 0;
bad:
    snprintf(err, errlen, "bad target '%s': expected http://HOST:PORT/PATH or tcp://HOST:PORT",
             target);
    return -EINVAL;
}

int opts_parse_mix(lg_opts_t *o, const char *text, char *err, size_t errlen)
{
    const char *p = text;
    o->nmix = 0;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[128];
        if (len == 0 || len >= sizeof item)
            goto bad;
        memcpy(item, p, len);
        item[len] = '\0';
        unsigned weight = 1;
        char *colon = strrchr(item, ':');
        if (colon) {
            uint64_t w;
            if (parse_num(colon + 1, 0, 1000000, &w) < 0)
                goto bad;
            weight = (unsigned)w;
            *colon = '\0';
        }
        /* Trim, then let the server's own parser judge the command. */
        char *s = item, *e = item + strlen(item);
        while (*s == ' ')
            s++;
        while (e > s && e[-1] == ' ')
            *--e = '\0';
        char line[80];
        proto_line_t pl;
        if (*s == '\0' || strlen(s) >= sizeof o->mix[0].cmd || o->nmix == LG_MAX_MIX)
            goto bad;
        snprintf(line, sizeof line, "%s\n", s);
        if (proto_parse_line(line, strlen(line), UINT64_MAX, &pl) <= 0 || pl.cmd == CMD_ERR) {
            snprintf(err, errlen, "bad --mix command '%s': %s", s, pl.err ? pl.err : "invalid");
            return -EINVAL;
        }
        if (pl.cmd == CMD_JOIN || pl.cmd == CMD_SAY || pl.cmd == CMD_LEAVE) {
            snprintf(err, errlen, "bad --mix command '%s': the chat's load is --chat", s);
            return -EINVAL;
        }
        if (weight > 0) {
            strcpy(o->mix[o->nmix].cmd, s);
            o->mix[o->nmix].weight = weight;
            o->nmix++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    if (o->nmix == 0)
        goto bad;
    return 0;
bad:
    snprintf(err, errlen,
             "bad --mix '%s': expected \"CMD:WEIGHT,...\" e.g. \"PING:80,BURN 1000:20\"", text);
    return -EINVAL;
}

static int read_body_file(lg_opts_t *o, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    size_t len = 0, cap = 0;
    if (!f)
        goto err;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            char *d = realloc(data, cap);
            if (!d)
                goto err;
            data = d;
        }
        size_t n = fread(data + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f))
                goto err;
            break;
        }
    }
    fclose(f);
    o->body = data;
    o->body_len = len;
    o->body_owned = 1;
    return 0;
err:
    snprintf(err, errlen, "cannot read --body file '%s': %s", path, strerror(errno));
    free(data);
    if (f)
        fclose(f);
    return -EINVAL;
}

static void set_defaults(lg_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->connections = 10;
    o->threads = 1;
    o->pipeline = 1;
    o->timeout_ms = 2000;
    o->method = "GET";
    o->slow_read_bps = 4096;
    o->slow_stream_bytes = 1ULL << 32; /* the protocol's maximum: never ends in a run */
    o->increment_max = 10000;
    o->stream_fd = -1;
    o->live_port = -1;
    o->seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
}

/* -R: requests per second over all connections, a positive real number. */
static int parse_rate(const char *val, void *dst, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    double r = strtod(val, &end);
    if (errno || end == val || *end || !(r > 0) || r > 1e9) {
        snprintf(err, errlen, "expected requests per second, more than 0, at most 1e9");
        return -EINVAL;
    }
    *(double *)dst = r;
    return 0;
}

/* --start-at: milliseconds since the epoch, as `date +%s%3N` prints them.
 * Seconds (ten digits) would mean 1970: refused rather than started now. */
static int parse_start_at(const char *val, void *dst, char *err, size_t errlen)
{
    uint64_t v;
    if (parse_num(val, 1000000000000ULL, 99999999999999ULL, &v) < 0) {
        snprintf(err, errlen, "expected milliseconds since the epoch (13 digits: date +%%s%%3N)");
        return -EINVAL;
    }
    *(int64_t *)dst = (int64_t)v;
    return 0;
}

/* --engine: epoll or uring. */
static int parse_engine(const char *val, void *dst, char *err, size_t errlen)
{
    if (strcmp(val, "epoll") == 0)
        *(int *)dst = LG_ENGINE_EPOLL;
    else if (strcmp(val, "uring") == 0)
        *(int *)dst = LG_ENGINE_URING;
    else {
        snprintf(err, errlen, "expected epoll or uring");
        return -EINVAL;
    }
    return 0;
}

/* --chat ROOMS:MEMBERS, each from 1 to 100000, 1,000,000 connections at most. */
static int parse_chat(const char *val, void *dst, char *err, size_t errlen)
{
    lg_opts_t *o = dst;
    unsigned rooms, members;
    char end;
    if (sscanf(val, "%u:%u%c", &rooms, &members, &end) != 2 || rooms < 1 || members < 1 ||
        rooms > 100000 || members > 100000 || (uint64_t)rooms * members > 1000000) {
        snprintf(err, errlen, "expected ROOMS:MEMBERS, at most 1000000 connections in all");
        return -EINVAL;
    }
    o->chat_rooms = rooms;
    o->chat_members = members;
    return 0;
}

/* -m: one token. */
static int check_method(const char *val, void *dst, char *err, size_t errlen)
{
    (void)dst;
    if (*val && !strpbrk(val, " \r\n\t"))
        return 0;
    snprintf(err, errlen, "expected a method such as GET or POST");
    return -EINVAL;
}

/* -H: "Name: value" on one line. */
static int check_header(const char *val, void *dst, char *err, size_t errlen)
{
    (void)dst;
    if (strchr(val, ':') && !strpbrk(val, "\r\n"))
        return 0;
    snprintf(err, errlen, "expected \"Name: value\"");
    return -EINVAL;
}

/* --path: an absolute path with no white space. */
static int check_path(const char *val, void *dst, char *err, size_t errlen)
{
    (void)dst;
    if (val[0] == '/' && !strpbrk(val, " \r\n\t"))
        return 0;
    snprintf(err, errlen, "expected a path starting with /");
    return -EINVAL;
}

static int check_metrics(const char *val, void *dst, char *err, size_t errlen)
{
    (void)dst;
    if (strncmp(val, "http://", 7) == 0)
        return 0;
    snprintf(err, errlen, "expected an http:// URL");
    return -EINVAL;
}

/* What the flags give that opts_finish turns into lg_opts_t's fields. */
typedef struct raw {
    const char *body;                    /* --body */
    const char *paths[LG_MAX_PATHS - 1]; /* --path (the URL's path comes first) */
    size_t npaths;
    const char *pos[2]; /* TARGET, and one too many */
    int npos;
} raw_t;

/* The flags into o and r, each checked on its own. Returns as opts_parse. */
static int parse_flags(lg_opts_t *o, raw_t *r, int argc, char **argv, char *err, size_t errlen)
{
    const opt_t table[] = {
        OPT_INT_E("connections", 'c', &o->connections, 1, 10000000, "N",
                  "connections (default 10)"),
        OPT_INT_E("threads", 't', &o->threads, 1, 1024, "N", "threads (default 1)"),
        OPT_DURATION_E("duration", 'd', &o->duration_us, 1, 1, OPT_NO_MAX, "T",
                       "measured time: 10s, 500ms, 2m (default 10s unless -n)"),
        OPT_INT_E("requests", 'n', &o->requests, 1, UINT64_MAX / 2, "N", "stop after N requests"),
        OPT_DURATION_E("warmup", 0, &o->warmup_us, 1, 0, OPT_NO_MAX, "T",
                       "run this long first without measuring"),
        OPT_CALL_E("rate", 'R', &o->rate, parse_rate, "N",
                   "open loop: N requests/s in total, latency from intended send time"),
        OPT_INT_E("pipeline", 0, &o->pipeline, 1, 1024, "N",
                  "requests in flight per connection (default 1)"),
        OPT_DURATION_E("timeout", 0, &o->timeout_ms, 1000, 1000, OPT_NO_MAX, "T",
                       "per-request timeout (default 2s)"),
        OPT_CALL_E("engine", 0, &o->engine, parse_engine, "E",
                   "epoll (default) or uring: io_uring, sends and receives batched\n"
                   "(falls back to epoll, saying so, where the kernel cannot)"),
        OPT_STRING_E("mix", 0, &o->mix_text, NULL, "SPEC",
                     "line protocol mix, e.g. \"PING:80,BURN 1000:10,WAIT 1:10\""),
        OPT_STRING_E("method", 'm', &o->method, check_method, "M", "HTTP method (default GET)"),
        OPT_STRINGS_E("header", 'H', o->headers, &o->nheaders, LG_MAX_HEADERS, check_header, "H",
                      "extra HTTP header \"Name: value\" (repeatable)"),
        OPT_STRING_E("body", 0, &r->body, NULL, "S|@FILE", "HTTP request body"),
        OPT_STRINGS_E("path", 0, r->paths, &r->npaths, LG_MAX_PATHS - 1, check_path, "P",
                      "another HTTP path in rotation (repeatable)"),
        OPT_CALL_E("chat", 0, o, parse_chat, "ROOMS:MEMBERS",
                   "the chat: MEMBERS connections JOIN each of ROOMS rooms, one SAYs\n"
                   "at a time per room; delivery latency (SAY to each MSG), fan-out rate"),
        OPT_INT_E("chat-bytes", 0, &o->chat_bytes, 0, 4000, "N",
                  "--chat: N bytes of padding in each SAY's text (default 0)"),
        OPT_INT_E("increment", 0, &o->increment_keys, 1, 100000000, "KEYS",
                  "POST /increment key=<k>&value=<v> over KEYS keys, sums in JSON"),
        OPT_INT_E("increment-max", 0, &o->increment_max, 0, 1000000000, "V",
                  "values drawn from -V..V (default 10000)"),
        OPT_FLAG_E("increment-positive", 0, &o->increment_positive,
                   "values drawn from 1..V instead: what is lost or applied twice\n"
                   "shows in the sums (scripts/check-incrementor)"),
        OPT_INT_E("idle", 0, &o->idle, 0, 10000000, "N", "hold N extra idle connections"),
        OPT_INT_E("slowloris", 0, &o->slowloris, 0, 1000000, "N",
                  "N connections sending a request one byte per second"),
        OPT_INT_E("slow-readers", 0, &o->slow_readers, 0, 1000000, "N",
                  "N connections reading a large STREAM slowly"),
        OPT_INT_E("slow-read-rate", 0, &o->slow_read_bps, 1, 1U << 30, "B",
                  "bytes/s each slow reader reads (default 4096)"),
        OPT_INT_E("server-pid", 0, &o->server_pid, 1, 1U << 30, "PID",
                  "sample that process from /proc during the run"),
        OPT_STRING_E("metrics", 0, &o->metrics_url, check_metrics, "URL",
                     "scrape this Prometheus endpoint before and after the run"),
        OPT_DURATION_E("wait-ready", 0, &o->wait_ready_ms, 1000, 0, OPT_NO_MAX, "T",
                       "wait up to T for the target to accept connections"),
        OPT_STRING_E("json", 0, &o->json_path, NULL, "FILE", "write the results as JSON"),
        OPT_STRING_E("hgrm", 0, &o->hgrm_path, NULL, "FILE",
                     "write the latency distribution in HdrHistogram .hgrm format"),
        OPT_STRING_E("hlog", 0, &o->hlog_path, NULL, "FILE",
                     "write an HdrHistogram interval log, one interval a second"),
        OPT_CALL_E("start-at", 0, &o->start_at_ms, parse_start_at, "MS",
                   "wait until this wall-clock time (ms since the epoch) to start,\n"
                   "so that agents on several hosts start together"),
        OPT_INT_E("seed", 0, &o->seed, 0, UINT64_MAX, "N",
                  "random seed (mix, increment keys and values)"),
        OPT_FLAG_E("quiet", 'q', &o->quiet, "no human summary on stdout"),
        OPT_INT_E("stream", 0, &o->stream_fd, 1, 1 << 20, "FD",
                  "write each second's figures on descriptor FD, one JSON line each"),
        OPT_INT_E("live", 0, &o->live_port, 0, 65535, "PORT",
                  "serve a live dashboard on http://127.0.0.1:PORT/ during the run\n"
                  "(0 picks a free port; the address is printed on stderr)"),
        OPT_END,
    };
    const opt_spec_t spec = {
        .prog = "loadgen",
        .args = " TARGET",
        .about = "  TARGET  http://HOST:PORT/PATH (HTTP/1.1) or tcp://HOST:PORT (line protocol)\n",
        .opts = table,
    };
    int rc = opt_parse(&spec, argc, argv, r->pos, 2, &r->npos, err, errlen);
    if (rc != 0)
        return rc;
    if (r->npos != 1) {
        snprintf(err, errlen,
                 r->npos == 0 ? "missing TARGET (try --help)"
                              : "one TARGET expected, got extra '%s'",
                 r->pos[1]);
        return -EINVAL;
    }
    return 0;
}

/* The target, and what depends on it or on several flags at once. Returns
 * 0 or -EINVAL with err filled; o owns the body it read. */
static int opts_finish(lg_opts_t *o, const raw_t *r, char *err, size_t errlen)
{
    o->target = r->pos[0];
    if (opts_parse_target(o, o->target, err, errlen) < 0)
        return -EINVAL;
    for (size_t i = 0; i < r->npaths; i++)
        o->paths[o->npaths++] = r->paths[i];

    if (o->proto == LG_LINE) {
        if (r->npaths || r->body || o->nheaders || o->increment_keys || strcmp(o->method, "GET")) {
            snprintf(err, errlen, "-m, -H, --body, --path and --increment need an http:// target");
            return -EINVAL;
        }
        if (opts_parse_mix(o, o->mix_text ? o->mix_text : "PING", err, errlen) < 0)
            return -EINVAL;
    } else if (o->mix_text || o->chat_rooms) {
        snprintf(err, errlen, "%s",
                 o->mix_text ? "--mix needs a tcp:// target (use --path for HTTP)"
                             : "--chat needs a tcp:// target");
        return -EINVAL;
    }
    if (o->chat_rooms && (o->stream_fd >= 0 || o->live_port >= 0)) {
        snprintf(err, errlen, "--stream and --live do not apply to --chat (it has no seconds)");
        return -EINVAL;
    }
    if (o->increment_keys && (r->body || r->npaths)) {
        snprintf(err, errlen, "--increment makes its own requests: no --body or --path with it");
        return -EINVAL;
    }
    if (r->body && r->body[0] == '@')
        return read_body_file(o, r->body + 1, err, errlen);
    if (r->body) {
        o->body = (char *)r->body;
        o->body_len = strlen(r->body);
    }
    return 0;
}

int opts_parse(lg_opts_t *o, int argc, char **argv, char *err, size_t errlen)
{
    raw_t r = {0};
    set_defaults(o);
    int rc = parse_flags(o, &r, argc, argv, err, errlen);
    if (rc == 0)
        rc = opts_finish(o, &r, err, errlen);
    if (rc != 0)
        return rc;
    if (o->threads > o->connections)
        o->threads = o->connections;
    if (!o->duration_us && !o->requests) /* -d is at least 1us when given */
        o->duration_us = 10 * 1000000LL;
    return 0;
}

void opts_free(lg_opts_t *o)
{
    if (o->body_owned)
        free(o->body);
    o->body = NULL;
    o->body_owned = 0;
}
