/* opts: the load generator's command line, parsed and checked.
 *
 * Everything the run needs is decided here, before any socket is opened, so a
 * bad flag costs one line on stderr and exit status 2, never a half-run. */
#ifndef LOADGEN_OPTS_H
#define LOADGEN_OPTS_H

#include <stddef.h>
#include <stdint.h>

#define LG_MAX_PATHS   64 /* --path entries in rotation */
#define LG_MAX_HEADERS 64 /* -H entries */
#define LG_MAX_MIX     32 /* --mix entries */

enum lg_proto { LG_HTTP, LG_LINE };
enum lg_engine { LG_ENGINE_EPOLL, LG_ENGINE_URING };

typedef struct lg_mix_entry {
    char cmd[64]; /* the command line without its newline: "BURN 1000" */
    unsigned weight;
} lg_mix_entry_t;

typedef struct lg_opts {
    const char *target; /* as given */
    int proto;          /* enum lg_proto */
    char host[256];
    int port;
    const char *paths[LG_MAX_PATHS]; /* HTTP paths in rotation (the URL's first) */
    size_t npaths;
    char url_path[2048]; /* storage for the URL's path */

    unsigned connections; /* -c */
    unsigned threads;     /* -t */
    int64_t duration_us;  /* -d; 0 when only -n bounds the run */
    uint64_t requests;    /* -n; 0 = no limit */
    int64_t warmup_us;    /* --warmup */
    double rate;          /* -R requests/s over all connections; 0 = closed loop */
    unsigned pipeline;    /* --pipeline: requests in flight per connection */
    int64_t timeout_ms;   /* --timeout */
    int engine;           /* --engine: enum lg_engine */

    const char *method;                  /* -m */
    const char *headers[LG_MAX_HEADERS]; /* -H "Name: value" */
    size_t nheaders;
    char *body; /* --body (owned when read from @FILE) */
    size_t body_len;
    int body_owned;

    const char *mix_text; /* --mix as given, NULL when absent */
    lg_mix_entry_t mix[LG_MAX_MIX];
    size_t nmix;

    unsigned idle;              /* --idle N */
    unsigned slowloris;         /* --slowloris N */
    unsigned slow_readers;      /* --slow-readers N */
    unsigned slow_read_bps;     /* --slow-read-rate bytes/s per slow reader */
    uint64_t slow_stream_bytes; /* how much a slow reader asks for */

    unsigned chat_rooms;   /* --chat ROOMS:MEMBERS; 0 = off (loadgen/chat.c) */
    unsigned chat_members; /* members per room */
    unsigned chat_bytes;   /* --chat-bytes: padding in each SAY's text */

    unsigned increment_keys; /* --increment KEYS; 0 = off */
    int increment_max;       /* values are drawn from -max..max */
    int increment_positive;  /* ... or from 1..max: a loss and a duplicate can't cancel */

    int server_pid;          /* --server-pid; 0 = none */
    const char *json_path;   /* --json */
    const char *hgrm_path;   /* --hgrm */
    const char *hlog_path;   /* --hlog: HdrHistogram interval log */
    int64_t start_at_ms;     /* --start-at: wall-clock ms since the epoch; 0 = now */
    const char *metrics_url; /* --metrics URL: scraped before and after */
    int64_t wait_ready_ms;   /* --wait-ready: poll until the target accepts */
    int quiet;               /* --quiet: no human summary */
    int stream_fd;           /* --stream FD: a JSON line a second on FD; -1 = off */
    int live_port;           /* --live PORT: the dashboard on 127.0.0.1; -1 = off */
    uint64_t seed;           /* --seed */
} lg_opts_t;

/* Parse argv into o (zeroed and defaulted first), with core/opt.h's parser.
 * Returns 0; 1 (OPT_DONE) when --help or --version was handled (the caller
 * exits 0); or -EINVAL with a one-line reason in err (the caller prints it
 * and exits 2). Keeps no state: the unit tests call it many times. */
int opts_parse(lg_opts_t *o, int argc, char **argv, char *err, size_t errlen);

/* Free what opts_parse allocated (a body read from @FILE). */
void opts_free(lg_opts_t *o);

/* Parse a duration: "10s", "500ms", "2m", "1h", "250us"; a bare number is
 * seconds. Returns 0 with *us set, or -EINVAL. */
int opts_parse_duration(const char *s, int64_t *us);

/* Parse a TARGET (http://HOST:PORT/PATH or tcp://HOST:PORT) into o's proto,
 * host, port and first path. Returns 0 or -EINVAL with err filled. */
int opts_parse_target(lg_opts_t *o, const char *target, char *err, size_t errlen);

/* Parse a --mix string ("PING:80,BURN 1000:10,WAIT 1:10"; a missing weight
 * is 1) into o->mix. Every command must be one the line protocol accepts.
 * Returns 0 or -EINVAL with err filled. */
int opts_parse_mix(lg_opts_t *o, const char *text, char *err, size_t errlen);

#endif
