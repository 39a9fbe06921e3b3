#include "opts.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/proto.h"

const char opts_usage[] =
    "usage: loadgen [options] TARGET\n"
    "  TARGET                http://HOST:PORT/PATH (HTTP/1.1) or tcp://HOST:PORT (line protocol)\n"
    "  -c, --connections N   connections (default 10)\n"
    "  -t, --threads N       threads (default 1)\n"
    "  -d, --duration T      measured time: 10s, 500ms, 2m (default 10s unless -n)\n"
    "  -n, --requests N      stop after N requests\n"
    "      --warmup T        run this long first without measuring\n"
    "  -R, --rate N          open loop: N requests/s in total, latency from intended send time\n"
    "      --pipeline N      requests in flight per connection (default 1)\n"
    "      --timeout T       per-request timeout (default 2s)\n"
    "      --mix SPEC        line protocol mix, e.g. \"PING:80,BURN 1000:10,WAIT 1:10\"\n"
    "  -m, --method M        HTTP method (default GET)\n"
    "  -H, --header H        extra HTTP header \"Name: value\" (repeatable)\n"
    "      --body S|@FILE    HTTP request body\n"
    "      --path P          another HTTP path in rotation (repeatable)\n"
    "      --increment KEYS  POST /increment key=<k>&value=<v> over KEYS keys, sums in JSON\n"
    "      --increment-max V values drawn from -V..V (default 10000)\n"
    "      --idle N          hold N extra idle connections\n"
    "      --slowloris N     N connections sending a request one byte per second\n"
    "      --slow-readers N  N connections reading a large STREAM slowly\n"
    "      --slow-read-rate B bytes/s each slow reader reads (default 4096)\n"
    "      --server-pid PID  sample that process from /proc during the run\n"
    "      --metrics URL     scrape this Prometheus endpoint before and after the run\n"
    "      --wait-ready T    wait up to T for the target to accept connections\n"
    "      --json FILE       write the results as JSON\n"
    "      --hgrm FILE       write the latency distribution in HdrHistogram .hgrm format\n"
    "      --seed N          random seed (mix, increment keys and values)\n"
    "  -q, --quiet           no human summary on stdout\n"
    "      --help, --version\n";

enum {
    O_WARMUP = 256, O_PIPELINE, O_TIMEOUT, O_MIX, O_BODY, O_PATH, O_INCREMENT, O_INCR_MAX,
    O_IDLE, O_SLOWLORIS, O_SLOW_READERS, O_SLOW_RATE, O_SERVER_PID, O_METRICS, O_WAIT_READY,
    O_JSON, O_HGRM, O_SEED, O_HELP, O_VERSION,
};

static const struct option longopts[] = {
    {"connections", required_argument, NULL, 'c'},
    {"threads", required_argument, NULL, 't'},
    {"duration", required_argument, NULL, 'd'},
    {"requests", required_argument, NULL, 'n'},
    {"rate", required_argument, NULL, 'R'},
    {"method", required_argument, NULL, 'm'},
    {"header", required_argument, NULL, 'H'},
    {"quiet", no_argument, NULL, 'q'},
    {"warmup", required_argument, NULL, O_WARMUP},
    {"pipeline", required_argument, NULL, O_PIPELINE},
    {"timeout", required_argument, NULL, O_TIMEOUT},
    {"mix", required_argument, NULL, O_MIX},
    {"body", required_argument, NULL, O_BODY},
    {"path", required_argument, NULL, O_PATH},
    {"increment", required_argument, NULL, O_INCREMENT},
    {"increment-max", required_argument, NULL, O_INCR_MAX},
    {"idle", required_argument, NULL, O_IDLE},
    {"slowloris", required_argument, NULL, O_SLOWLORIS},
    {"slow-readers", required_argument, NULL, O_SLOW_READERS},
    {"slow-read-rate", required_argument, NULL, O_SLOW_RATE},
    {"server-pid", required_argument, NULL, O_SERVER_PID},
    {"metrics", required_argument, NULL, O_METRICS},
    {"wait-ready", required_argument, NULL, O_WAIT_READY},
    {"json", required_argument, NULL, O_JSON},
    {"hgrm", required_argument, NULL, O_HGRM},
    {"seed", required_argument, NULL, O_SEED},
    {"help", no_argument, NULL, O_HELP},
    {"version", no_argument, NULL, O_VERSION},
    {NULL, 0, NULL, 0},
};

int opts_parse_duration(const char *s, int64_t *us)
{
    char *end;
    if (!s || !*s || !(isdigit((unsigned char)*s) || *s == '.'))
        return -EINVAL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s)
        return -EINVAL;
    double mult;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1e6;
    else if (strcmp(end, "ms") == 0)
        mult = 1e3;
    else if (strcmp(end, "us") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60e6;
    else if (strcmp(end, "h") == 0)
        mult = 3600e6;
    else
        return -EINVAL;
    v *= mult;
    if (v < 0 || v > 1e15)
        return -EINVAL;
    *us = (int64_t)(v + 0.5);
    return 0;
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
    snprintf(err, errlen, "bad --mix '%s': expected \"CMD:WEIGHT,...\" e.g. \"PING:80,BURN 1000:20\"",
             text);
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
    o->seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
}

int opts_parse(lg_opts_t *o, int argc, char **argv, char *err, size_t errlen)
{
    int c, have_d = 0;
    uint64_t v;
    int64_t us;
    const char *body_arg = NULL;
    const char *extra_paths[LG_MAX_PATHS];
    size_t nextra = 0;

    set_defaults(o);
    optind = 0; /* GNU: full re-initialisation, so tests can parse again */
    opterr = 0;
    char name[48];
    int li;
    while ((li = -1, c = getopt_long(argc, argv, ":c:t:d:n:R:m:H:q", longopts, &li)) != -1) {
        if (li >= 0)
            snprintf(name, sizeof name, "--%s", longopts[li].name);
        else
            snprintf(name, sizeof name, "-%c", c == ':' || c == '?' ? optopt : c);
        switch (c) {
        case 'c':
            if (parse_num(optarg, 1, 10000000, &v) < 0)
                goto bad_arg;
            o->connections = (unsigned)v;
            break;
        case 't':
            if (parse_num(optarg, 1, 1024, &v) < 0)
                goto bad_arg;
            o->threads = (unsigned)v;
            break;
        case 'd':
            if (opts_parse_duration(optarg, &us) < 0 || us <= 0)
                goto bad_arg;
            o->duration_us = us;
            have_d = 1;
            break;
        case 'n':
            if (parse_num(optarg, 1, UINT64_MAX / 2, &v) < 0)
                goto bad_arg;
            o->requests = v;
            break;
        case 'R': {
            char *end;
            errno = 0;
            double r = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(r > 0) || r > 1e9)
                goto bad_arg;
            o->rate = r;
            break;
        }
        case 'm':
            if (!*optarg || strpbrk(optarg, " \r\n\t"))
                goto bad_arg;
            o->method = optarg;
            break;
        case 'H':
            if (!strchr(optarg, ':') || strpbrk(optarg, "\r\n") || o->nheaders == LG_MAX_HEADERS)
                goto bad_arg;
            o->headers[o->nheaders++] = optarg;
            break;
        case 'q':
            o->quiet = 1;
            break;
        case O_WARMUP:
            if (opts_parse_duration(optarg, &us) < 0)
                goto bad_arg;
            o->warmup_us = us;
            break;
        case O_PIPELINE:
            if (parse_num(optarg, 1, 1024, &v) < 0)
                goto bad_arg;
            o->pipeline = (unsigned)v;
            break;
        case O_TIMEOUT:
            if (opts_parse_duration(optarg, &us) < 0 || us < 1000)
                goto bad_arg;
            o->timeout_ms = us / 1000;
            break;
        case O_MIX:
            o->mix_text = optarg;
            break;
        case O_BODY:
            body_arg = optarg;
            break;
        case O_PATH:
            if (optarg[0] != '/' || strpbrk(optarg, " \r\n\t") || nextra + 1 == LG_MAX_PATHS)
                goto bad_arg;
            extra_paths[nextra++] = optarg;
            break;
        case O_INCREMENT:
            if (parse_num(optarg, 1, 100000000, &v) < 0)
                goto bad_arg;
            o->increment_keys = (unsigned)v;
            break;
        case O_INCR_MAX:
            if (parse_num(optarg, 0, 1000000000, &v) < 0)
                goto bad_arg;
            o->increment_max = (int)v;
            break;
        case O_IDLE:
            if (parse_num(optarg, 0, 10000000, &v) < 0)
                goto bad_arg;
            o->idle = (unsigned)v;
            break;
        case O_SLOWLORIS:
            if (parse_num(optarg, 0, 1000000, &v) < 0)
                goto bad_arg;
            o->slowloris = (unsigned)v;
            break;
        case O_SLOW_READERS:
            if (parse_num(optarg, 0, 1000000, &v) < 0)
                goto bad_arg;
            o->slow_readers = (unsigned)v;
            break;
        case O_SLOW_RATE:
            if (parse_num(optarg, 1, 1U << 30, &v) < 0)
                goto bad_arg;
            o->slow_read_bps = (unsigned)v;
            break;
        case O_SERVER_PID:
            if (parse_num(optarg, 1, 1U << 30, &v) < 0)
                goto bad_arg;
            o->server_pid = (int)v;
            break;
        case O_METRICS:
            if (strncmp(optarg, "http://", 7) != 0)
                goto bad_arg;
            o->metrics_url = optarg;
            break;
        case O_WAIT_READY:
            if (opts_parse_duration(optarg, &us) < 0)
                goto bad_arg;
            o->wait_ready_ms = us / 1000;
            break;
        case O_JSON:
            o->json_path = optarg;
            break;
        case O_HGRM:
            o->hgrm_path = optarg;
            break;
        case O_SEED:
            if (parse_num(optarg, 0, UINT64_MAX, &v) < 0)
                goto bad_arg;
            o->seed = v;
            break;
        case O_HELP:
            fputs(opts_usage, stdout);
            return 1;
        case O_VERSION:
            puts("loadgen 1.0");
            return 1;
        case ':':
            snprintf(err, errlen, "option '%s' needs a value",
                     optopt ? name : argv[optind - 1]);
            return -EINVAL;
        default:
            snprintf(err, errlen, "unknown option '%s' (try --help)", argv[optind - 1]);
            return -EINVAL;
        }
    }
    if (optind != argc - 1) {
        snprintf(err, errlen, optind >= argc ? "missing TARGET (try --help)"
                                             : "one TARGET expected, got extra '%s'",
                 argv[argc - 1]);
        return -EINVAL;
    }
    o->target = argv[optind];
    if (opts_parse_target(o, o->target, err, errlen) < 0)
        return -EINVAL;
    for (size_t i = 0; i < nextra; i++)
        o->paths[o->npaths++] = extra_paths[i];

    if (o->proto == LG_LINE) {
        if (nextra || body_arg || o->nheaders || o->increment_keys || strcmp(o->method, "GET")) {
            snprintf(err, errlen, "-m, -H, --body, --path and --increment need an http:// target");
            return -EINVAL;
        }
        if (opts_parse_mix(o, o->mix_text ? o->mix_text : "PING", err, errlen) < 0)
            return -EINVAL;
    } else if (o->mix_text) {
        snprintf(err, errlen, "--mix needs a tcp:// target (use --path for HTTP)");
        return -EINVAL;
    }
    if (body_arg) {
        if (body_arg[0] == '@') {
            if (read_body_file(o, body_arg + 1, err, errlen) < 0)
                return -EINVAL;
        } else {
            o->body = (char *)body_arg;
            o->body_len = strlen(body_arg);
        }
    }
    if (o->increment_keys && (body_arg || nextra)) {
        snprintf(err, errlen, "--increment makes its own requests: no --body or --path with it");
        opts_free(o);
        return -EINVAL;
    }
    if (o->threads > o->connections)
        o->threads = o->connections;
    if (!have_d && !o->requests)
        o->duration_us = 10 * 1000000LL;
    return 0;
bad_arg:
    snprintf(err, errlen, "bad value '%s' for %s", optarg ? optarg : "", name);
    opts_free(o);
    return -EINVAL;
}

void opts_free(lg_opts_t *o)
{
    if (o->body_owned)
        free(o->body);
    o->body = NULL;
    o->body_owned = 0;
}
