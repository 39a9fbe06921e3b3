/* incrementor - a counter service: clients POST increments, the service sums
 * them in memory per loop thread and writes the sums into SQLite in one
 * transaction per --flush-ms ("gear ratio": 10+1+1+1 = 10+3, one write per
 * key per interval). The reactor of the core serves HTTP; service.c handles
 * the requests, flush.c the writer thread, db.c the database. With --queue
 * it is a web node handing its sums to Redis (queue.c), with --consume the
 * writer applying them to SQLite (consume.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/opt.h"
#include "db.h"
#include "redis.h"
#include "service.h"

/* --ack: buffered or durable. */
static int parse_ack(const char *val, void *dst, char *err, size_t errlen)
{
    if (strcmp(val, "buffered") && strcmp(val, "durable")) {
        snprintf(err, errlen, "expected buffered or durable");
        return -EINVAL;
    }
    *(int *)dst = strcmp(val, "durable") == 0;
    return 0;
}

/* --queue, --consume: redis://HOST:PORT (checked by rds_parse_url). */
static int check_url(const char *val, void *dst, char *err, size_t errlen)
{
    char host[256];
    int port;
    (void)dst;
    if (rds_parse_url(val, host, sizeof host, &port) == 0)
        return 0;
    snprintf(err, errlen, "expected redis://HOST:PORT");
    return -EINVAL;
}

/* --db: any file name but the empty one. */
static int check_db(const char *val, void *dst, char *err, size_t errlen)
{
    (void)dst;
    if (*val)
        return 0;
    snprintf(err, errlen, "expected a file name");
    return -EINVAL;
}

static void defaults(svc_cfg_t *cfg)
{
    server_cfg_t *sc = &cfg->server;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    *cfg = (svc_cfg_t){.db_path = "./numbers.db",
                       .flush_ms = 100,
                       .idem_window_ms = SVC_IDEM_WINDOW_S * INT64_C(1000),
                       .idem_keys = SVC_IDEM_KEYS,
                       .consumer = "writer",
                       .claim_ms = 5000,
                       .lease_ms = 10000};
    sc->design = "incrementor";
    sc->host = "127.0.0.1";
    sc->port = 3333;
    sc->threads = ncpu > 0 ? (int)(ncpu < SVC_THREADS_MAX ? ncpu : SVC_THREADS_MAX) : 1;
    sc->workers = 1; /* only for the core's /burn */
    session_cfg_default(&sc->session);
    sc->session.json_errors = 1;
}

/* Parse the command line into cfg (defaulted first), or exit: 0 after
 * --help or --version, 2 on a bad flag. */
static void parse_flags(svc_cfg_t *cfg, int argc, char **argv)
{
    server_cfg_t *sc = &cfg->server;
    defaults(cfg);
    const opt_t table[] = {
        OPT_STRING_E("db", 0, &cfg->db_path, check_db, "FILE",
                     "SQLite database, created if absent (./numbers.db)"),
        OPT_STRING_E("host", 0, &sc->host, NULL, "ADDR", "address to listen on (127.0.0.1)"),
        OPT_INT_E("port", 0, &sc->port, 0, 65535, "N", "port, 0 for any free one (3333)"),
        OPT_INT_E("flush-ms", 0, &cfg->flush_ms, 1, 60000, "MS",
                  "write the sums every MS milliseconds (100)"),
        OPT_CALL_E("ack", 0, &cfg->durable, parse_ack, "MODE",
                   "buffered: answer once summed in memory;\n"
                   "durable: answer once committed (buffered)"),
        OPT_INT_E("threads", 0, &sc->threads, 1, SVC_THREADS_MAX, "N", "event loops (online CPUs)"),
        /* Whole seconds or a duration ("1h"), kept in milliseconds. */
        OPT_DURATION_E("idempotency-window", 0, &cfg->idem_window_ms, 1000, 1000000,
                       366 * 86400 * INT64_C(1000000), "S",
                       "remember an Idempotency-Key for S seconds (86400) ..."),
        OPT_INT_E("idempotency-keys", 0, &cfg->idem_keys, 1, 1000000000, "N",
                  "... and among the newest N keys (1000000)"),
        OPT_STRING_E("queue", 0, &cfg->queue_url, check_url, "URL",
                     "a web node: hand each window's sums to Redis at redis://HOST:PORT"),
        OPT_STRING_E("consume", 0, &cfg->consume_url, check_url, "URL",
                     "the writer: apply Redis's stream at redis://HOST:PORT to --db"),
        OPT_STRING_E("consumer", 0, &cfg->consumer, check_db, "NAME",
                     "the writer's name in the consumer group (writer)"),
        OPT_INT_E("claim-ms", 0, &cfg->claim_ms, 100, 3600000, "MS",
                  "take over another writer's entries idle this long (5000)"),
        OPT_INT_E("lease-ms", 0, &cfg->lease_ms, 200, 3600000, "MS",
                  "a buffered web node's lease in Redis (10000)"),
        OPT_END,
    };
    opt_spec_t spec = {.prog = "incrementor", .opts = table};
    opt_parse_or_exit(&spec, argc, argv, NULL, 0);
    if (cfg->queue_url && cfg->consume_url) {
        fprintf(stderr, "incrementor: --queue and --consume exclude each other\n");
        exit(2);
    }
}

int main(int argc, char **argv)
{
    svc_cfg_t cfg;
    parse_flags(&cfg, argc, argv);
    db_global_init(); /* before any thread and any other SQLite call */
    server_process_init();
    svc_t svc;
    if (svc_init(&svc, &cfg) < 0) {
        svc_free(&svc);
        return 1;
    }
    int status = svc_run(&svc);
    svc_free(&svc);
    return status;
}
