/* service: the incrementor's state shared by the loop threads (service.c:
 * the HTTP requests) and the writer thread (flush.c: the transactions).
 *
 * Each loop thread sums the increments it acknowledges into its own window
 * (an agg map) under its own mutex, which only the writer ever contends
 * for, once per flush: no lock is shared between loop threads on the
 * request path. Every --flush-ms the writer swaps each thread's window for
 * an empty one and writes what it took in one transaction.
 *
 * A request is either acknowledged at once ("fast": buffered mode, while
 * the overflow rule allows it, see flush.c) or deferred: kept in the window
 * with its items, decided and answered by the writer after the commit that
 * holds it (every request in durable mode, and every request that carries
 * an Idempotency-Key: its key is recorded in the transaction that applies
 * it, see flush.c). */
#ifndef INCR_SERVICE_H
#define INCR_SERVICE_H

#include <pthread.h>
#include <stdint.h>

#include "agg.h"
#include "core/server.h"
#include "db.h"
#include "lag.h"
#include "parse.h"

/* A fast acknowledgement is refused (the request is deferred instead) when
 * it would bring the sum of |v| of a key in one thread's window above this.
 * With at most SVC_THREADS_MAX threads, what one process has acknowledged
 * and not yet committed on one key is below 2^50 per window (2^51 across a
 * failed commit, after which the fast path closes). */
#define SVC_FAST_MAX     (INT64_C(1) << 40)
#define SVC_THREADS_MAX  1024
#define SVC_OWN_PENDING  (INT64_C(1) << 50) /* this process's open windows */
#define SVC_PROC_PENDING (INT64_C(1) << 51) /* another process's windows, failed ones included */

#define SVC_IDEM_WINDOW_S 86400   /* --idempotency-window default: a day */
#define SVC_IDEM_KEYS     1000000 /* --idempotency-keys default */

typedef struct svc_cfg {
    const char *db_path;
    int flush_ms;
    int durable;             /* --ack durable */
    int64_t idem_window_ms;  /* a key is remembered this long ... */
    int64_t idem_keys;       /* ... and among the newest this many */
    const char *queue_url;   /* --queue: a web node (queue.c) */
    const char *consume_url; /* --consume: the writer (consume.c) */
    const char *consumer;    /* --consumer: its name in the group */
    int claim_ms;            /* --claim-ms */
    int lease_ms;            /* --lease-ms: a buffered web node's lease in Redis */
    server_cfg_t server;
} svc_cfg_t;

/* What the writer decided for a deferred request. */
enum svc_outcome {
    SVC_OK = 1,   /* applied (or, replayed: applied by the first request with its key): 200 */
    SVC_OVERFLOW, /* would leave int64, nothing applied: 422 */
    SVC_CONFLICT, /* its Idempotency-Key was used for another request: 422 */
    SVC_FAILED,   /* the commit failed, nothing applied: 503 */
    SVC_NOMEM,    /* out of memory, nothing applied: 503 */
};

/* A deferred request: its items are items[item_off .. item_off+nitems), its
 * Idempotency-Key (idem_len 0: none) keys[idem_off .. idem_off+idem_len). */
typedef struct svc_deferred {
    session_t *s;
    int64_t t_ms; /* when it arrived */
    uint32_t item_off, nitems;
    uint64_t fp; /* req_fingerprint of the items, with a key */
    uint32_t idem_off;
    uint16_t idem_len;
    uint8_t replay;  /* writer: answered from the key's record, nothing applied */
    uint8_t outcome; /* writer: enum svc_outcome */
} svc_deferred_t;

typedef struct svc_item {
    uint32_t key_off, key_len; /* into the window's keys */
    int64_t v;
} svc_item_t;

/* What one thread gathered between two swaps. */
typedef struct svc_window {
    agg_t fast; /* acknowledged increments, summed per key */
    uint64_t fast_reqs, fast_items;
    svc_deferred_t *defs;
    size_t ndefs, cap_defs;
    svc_item_t *items;
    size_t nitems, cap_items;
    char *keys;
    size_t keys_len, keys_cap;
    int64_t start_ms;      /* opened at */
    int64_t oldest_ack_ms; /* first fast acknowledgement, 0 = none */
    uint32_t *acks;        /* fast acknowledgements per ms since start_ms */
    size_t nacks;
    struct svc_window *next; /* writer's lists */
} svc_window_t;

/* Counters a loop thread keeps for /stats, written by it alone. */
typedef struct svc_counts {
    uint64_t accepted; /* requests answered 200 at once */
    uint64_t accepted_items;
    uint64_t deferred; /* requests handed to the writer */
    uint64_t refused;  /* 4xx answers to POST /increment */
} svc_counts_t;

typedef struct svc_thread {
    pthread_mutex_t lock; /* guards cur (the writer swaps it) */
    svc_window_t *cur;
    svc_counts_t counts;
    db_t *reader; /* for GET /counters, opened on first use */
} __attribute__((aligned(64))) svc_thread_t;

typedef struct svc {
    svc_cfg_t cfg;
    int nthreads;
    svc_thread_t *threads;
    int fast_open;       /* atomic: fast acknowledgements allowed (see flush.c) */
    int loops_gone;      /* atomic: reactor_run returned, answer nobody */
    int kick;            /* atomic: a request was deferred since the last flush began */
    session_canned_t ok; /* the 200 of an increment acknowledged at once */

    /* The writer. */
    db_t *db;
    pthread_t writer, checkpointer;
    db_t *ckpt;
    pthread_mutex_t wlock;
    pthread_cond_t wcond;    /* wakes the writer */
    pthread_cond_t ccond;    /* wakes the checkpointer */
    int ckpt_kick;           /* under wlock: the WAL is long, checkpoint now */
    int stop;                /* under wlock: flush what is left and exit */
    svc_window_t *spare;     /* writer: empty windows to hand out */
    svc_window_t *pending;   /* writer: taken, not yet committed */
    agg_t w;                 /* writer: the batch of one transaction */
    db_row_t *rows;          /* writer: its rows, then in key order (svc_write_sums) */
    struct svc_order *order; /* writer: svc_write_sums's sort */
    size_t rows_cap;         /* of each half of rows, and of order */
    int exit_status;

    /* Durable: the syncer makes committed batches durable (flush.c). */
    pthread_t syncer;
    int sync_running;         /* the syncer thread runs: batches go to it */
    pthread_mutex_t slock;    /* guards the three below */
    pthread_cond_t scond;     /* wakes the syncer */
    pthread_cond_t staken;    /* the syncer took the queue: wakes the writer */
    struct svc_batch *sync_q; /* committed, waiting for a sync */
    struct svc_batch **sync_tail;
    svc_window_t *synced; /* answered: back to the writer's spare list */
    int sync_stop;        /* under slock: sync what is queued and exit */

    /* Written by the writer, read by /stats (atomics). */
    uint64_t applied, applied_reqs, deferred_ok, flushes, failed_flushes, rejected_overflow,
        failed_reqs;
    uint64_t rows_written; /* rows upserted by committed flushes */
    uint64_t last_flush_us, pending_keys, pending_items, barriers;
    uint64_t idem_replayed, idem_conflicts, idem_evicted, idem_keys;
    int64_t idem_trimmed_ms; /* writer: wall clock of the last db_idem_trim */
    lag_hist_t lag;          /* fast acknowledgement -> commit */
    lag_hist_t wait;         /* deferred request arrival -> commit */

    /* Past one machine (queue.c, consume.c). */
    struct queue *queue;     /* --queue: this web node's link to Redis */
    struct consume *consume; /* --consume: the writer's */
    int64_t fast_until;      /* atomic, --queue: fast acknowledgements only before this
                                (time_now_ms), while the node's lease runs; 0: no limit */
} svc_t;

/* Open the database and set up the threads' state. Returns 0, or prints
 * one line on stderr and returns a negative errno. */
int svc_init(svc_t *svc, const svc_cfg_t *cfg);

/* Serve until SIGTERM/SIGINT, then drain, flush what is left, and return
 * the exit status (0 when nothing acknowledged was lost). */
int svc_run(svc_t *svc);

/* Free everything (after svc_run). */
void svc_free(svc_t *svc);

/* The extension hook for session_cfg.ext (ctx is the svc_t). */
int svc_handle(session_t *s, const http_request_t *req, const char *body, size_t len, void *ctx);

/* flush.c: wake the writer for a deferred request (group commit: it
 * commits as soon as it is free rather than at the next --flush-ms). */
void svc_kick(svc_t *svc);
/* flush.c: the checkpointer thread's body (arg is the svc_t): a checkpoint
 * (db_checkpoint) every SVC_CHECKPOINT_MS, and whenever svc_wal_check
 * finds the WAL long, until svc->stop. */
void *svc_checkpointer_main(void *arg);
/* flush.c: the writer, after a commit: wake the checkpointer if the WAL
 * has passed DB_WAL_RESTART frames, so that it is started over before it
 * grows further (db_checkpoint). */
void svc_wal_check(svc_t *svc);
#define SVC_CHECKPOINT_MS 1000
/* flush.c: the syncer thread's body (arg is the svc_t; durable mode): sync
 * the WAL for the batches the writer committed, then answer them, while
 * the writer writes the next batch; until svc->sync_stop and nothing is
 * queued. */
void *svc_syncer_main(void *arg);
/* flush.c: the writer thread's body (arg is the svc_t). */
void *svc_writer_main(void *arg);

/* Sleep on svc->wlock until `until` (time_update's clock, ms), a kick
 * (svc->kick) or the stop, whichever comes first. Returns svc->stop as seen
 * under the lock. For the threads that flush windows (the writer, a web
 * node's queue). */
int svc_wait_work(svc_t *svc, int64_t until);

/* When the window opened at `now` closes, the last one having been due at
 * `due` (time_update's clock, ms): `due` itself if it is not yet (woken
 * early, by a kick), else flush_ms after `due`, not after `now`, so that
 * windows keep to a fixed clock however late their taker wakes (a CPU
 * quota's stall); now + flush_ms if that is past too. */
int64_t svc_next_window(int64_t due, int64_t now, int flush_ms);

/* In the open transaction: write each key of m that has increments (its
 * sum + slow), in key order, DB_ROWS to a statement (db_add_rows), adding their
 * increments to *applied and the rows to *rows. Returns 0 or a negative
 * errno (the caller rolls back; the counts then mean nothing). */
int svc_write_sums(svc_t *svc, const agg_t *m, uint64_t *applied, uint64_t *rows);

/* Add window w's acknowledged ("fast") sums to the batch being built in
 * svc->w, key by key. Returns 0 or -ENOMEM. */
int svc_merge(svc_t *svc, svc_window_t *w);
/* flush.c: a window for a thread, from the spare list or new (NULL if out
 * of memory). Writer thread only, or before it starts. */
svc_window_t *svc_window_new(svc_t *svc, int64_t now);
/* flush.c: wall-clock milliseconds, the time of idempotency keys: they
 * outlive the process and are shared with other processes, so this
 * process's monotonic clock can't date them. */
int64_t svc_wall_ms(void);
/* flush.c: free a window list. */
void svc_window_free_list(svc_window_t *w);
/* flush.c, for queue.c: take every thread's window (appended to
 * svc->pending); send each deferred request of svc->pending its decided
 * answer (its `outcome`); recycle svc->pending's windows. Writer thread. */
void svc_take_windows(svc_t *svc);
void svc_answer_pending(svc_t *svc);
void svc_recycle_pending(svc_t *svc);

/* queue.c (--queue, a web node): connect to Redis and register the node
 * (0, or one line on stderr and a negative errno); the thread that hands
 * the windows to Redis, in place of the writer (arg is the svc_t); the
 * node's part of /stats (a JSON member, without braces around it, written
 * into buf); free. */
int queue_init(svc_t *svc);
void *queue_main(void *arg);
void queue_stats(svc_t *svc, char *buf, size_t len);
void queue_free(svc_t *svc);

/* consume.c (--consume, the writer): connect to Redis and create the
 * consumer group (0, or one line on stderr and a negative errno); the
 * thread that applies the stream to the database (arg is the svc_t); its
 * part of /stats; free. */
int consume_init(svc_t *svc);
void *consume_main(void *arg);
void consume_stats(svc_t *svc, char *buf, size_t len);
void consume_free(svc_t *svc);

/* The end-to-end lag (acknowledgement to commit) as this node knows it: the
 * writer's own histogram, or what it published in Redis (a web node). */
void svc_lag(svc_t *svc, uint64_t *n, uint64_t *max, uint64_t *p50, uint64_t *p99);

#endif
