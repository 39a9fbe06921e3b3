/* incrementor - a counter service: clients POST increments, the service sums
 * them in memory per loop thread and writes the sums into SQLite in one
 * transaction per --flush-ms ("gear ratio": 10+1+1+1 = 10+3, one write per
 * key per interval). The reactor of the core serves HTTP; service.c handles
 * the requests, flush.c the writer thread, db.c the database. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/proto.h"
#include "service.h"

#define VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f, "usage: incrementor [options]\n"
               "  --db FILE          SQLite database, created if absent (./numbers.db)\n"
               "  --host ADDR        address to listen on (127.0.0.1)\n"
               "  --port N           port, 0 for any free one (3333)\n"
               "  --flush-ms MS      write the sums every MS milliseconds (100)\n"
               "  --ack MODE         buffered: answer once summed in memory;\n"
               "                     durable: answer once committed (buffered)\n"
               "  --threads N        event loops (online CPUs)\n"
               "  --idempotency-window S\n"
               "                     remember an Idempotency-Key for S seconds (86400) ...\n"
               "  --idempotency-keys N\n"
               "                     ... and among the newest N keys (1000000)\n"
               "  --help, --version\n");
}

static long long int_arg(const char *flag, const char *v, long long lo, long long hi)
{
    uint64_t x;
    if (proto_parse_u64(v, strlen(v), (uint64_t)hi, &x) < 0 || (long long)x < lo) {
        fprintf(stderr, "incrementor: --%s: expected an integer from %lld to %lld, got '%s'\n",
                flag, lo, hi, v);
        exit(2);
    }
    return (long long)x;
}

int main(int argc, char **argv)
{
    enum { O_DB = 256, O_HOST, O_PORT, O_FLUSH, O_ACK, O_THREADS, O_IDEM_WINDOW, O_IDEM_KEYS,
           O_HELP, O_VERSION };
    static const struct option opts[] = {
        {"db", 1, 0, O_DB}, {"host", 1, 0, O_HOST}, {"port", 1, 0, O_PORT},
        {"flush-ms", 1, 0, O_FLUSH}, {"ack", 1, 0, O_ACK}, {"threads", 1, 0, O_THREADS},
        {"idempotency-window", 1, 0, O_IDEM_WINDOW}, {"idempotency-keys", 1, 0, O_IDEM_KEYS},
        {"help", 0, 0, O_HELP}, {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};
    svc_cfg_t cfg = {.db_path = "./numbers.db", .flush_ms = 100,
                     .idem_window_ms = SVC_IDEM_WINDOW_S * INT64_C(1000),
                     .idem_keys = SVC_IDEM_KEYS};
    server_cfg_t *sc = &cfg.server;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    sc->design = "incrementor";
    sc->host = "127.0.0.1";
    sc->port = 3333;
    sc->threads = ncpu > 0 ? (int)(ncpu < SVC_THREADS_MAX ? ncpu : SVC_THREADS_MAX) : 1;
    sc->workers = 1; /* only for the core's /burn */
    session_cfg_default(&sc->session);
    sc->session.json_errors = 1;

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        const char *name = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
        switch (c) {
        case O_DB: cfg.db_path = optarg; break;
        case O_HOST: sc->host = optarg; break;
        case O_PORT: sc->port = (int)int_arg("port", optarg, 0, 65535); break;
        case O_FLUSH: cfg.flush_ms = (int)int_arg("flush-ms", optarg, 1, 60000); break;
        case O_THREADS: sc->threads = (int)int_arg("threads", optarg, 1, SVC_THREADS_MAX); break;
        case O_IDEM_WINDOW:
            cfg.idem_window_ms = int_arg("idempotency-window", optarg, 1, 366 * 86400) * 1000LL;
            break;
        case O_IDEM_KEYS:
            cfg.idem_keys = int_arg("idempotency-keys", optarg, 1, 1000000000);
            break;
        case O_ACK:
            if (strcmp(optarg, "buffered") && strcmp(optarg, "durable")) {
                fprintf(stderr, "incrementor: --ack: expected buffered or durable, got '%s'\n",
                        optarg);
                exit(2);
            }
            cfg.durable = strcmp(optarg, "durable") == 0;
            break;
        case O_HELP: usage(stdout); return 0;
        case O_VERSION: printf("incrementor %s\n", VERSION); return 0;
        case ':':
            fprintf(stderr, "incrementor: %s needs a value\n", name);
            return 2;
        default:
            fprintf(stderr, "incrementor: unknown option '%s' (see --help)\n", name);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "incrementor: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (!*cfg.db_path) {
        fprintf(stderr, "incrementor: --db: expected a file name\n");
        return 2;
    }

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
