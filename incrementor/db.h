/* db: the incrementor's SQLite storage.
 *
 * Table counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL), in WAL mode;
 * a CHECK (or triggers) makes any write that would leave int64 fail (SQLite
 * would store a REAL). The int64 overflow rule across processes (see
 * flush.c) needs two more things: the partial index incrementor_red of the
 * counters outside +-DB_GREEN ('red'), exact whoever writes; and the file
 * PATH-writers, which registers the live incrementor processes and whether
 * they acknowledge before committing (buffered), each with a lock that the
 * kernel drops when the process ends (db.c says why a lock and not a PID).
 * It stays beside the database, like a lock file. (Older versions kept a
 * table incrementor_writers; it is no longer read.)
 *
 * Idempotency keys live in incrementor_idempotency(key TEXT PRIMARY KEY, fp,
 * status, at): the request's fingerprint, the answer it got (200 or 422)
 * and when (wall-clock ms), written in the transaction that applies the
 * request, so that the key and the increment commit or vanish together.
 * incrementor_meta's 'idempotency_keys' counts the rows (triggers).
 *
 * A db_t is one connection with its prepared statements, used by one thread
 * at a time: the writer has one, each loop thread a read-only one. Functions
 * return 0 (or a count), or a negative SQLite-derived errno: -EBUSY for a
 * database locked beyond the busy timeout, -EIO otherwise; db_errmsg says
 * more. */
#ifndef INCR_DB_H
#define INCR_DB_H

#include <stddef.h>
#include <stdint.h>

#define DB_GREEN           (INT64_C(1) << 61) /* |value| above this counts as 'red' */
/* The red counters: the partial index's condition, and db_red's query on it
 * (the same words, so that SQLite uses the index: tests/unit checks it). */
#define DB_RED_WHERE       "value NOT BETWEEN -2305843009213693952 AND 2305843009213693952"
#define DB_RED_QUERY       "SELECT EXISTS(SELECT 1 FROM counters WHERE " DB_RED_WHERE ")"
#define DB_BUSY_MS         5000  /* busy timeout: then the flush fails and is retried */
#define DB_WRITERS_MAX     1024  /* processes sharing one database (see flush.c) */
#define DB_IDEM_SWEEP      10000 /* expired idempotency keys deleted per db_idem_trim */
#define DB_WAL_RESTART     1000  /* WAL frames past which db_checkpoint restarts it */
#define DB_RESTART_WAIT_MS 100   /* ... waiting at most this for the lock and readers */

typedef struct db db_t;

/* How a writer's commits become durable. */
enum db_sync {
    DB_BUFFERED,       /* synchronous NORMAL: a commit is synced at checkpoints */
    DB_DURABLE_FULL,   /* synchronous FULL: a commit is durable when it returns */
    DB_DURABLE_SYNCED, /* NORMAL, and the caller makes its commits durable with
                        * db_wal_sync before it acknowledges them (flush.c) */
};

/* Once, at the program's start, before any thread and any other SQLite
 * call: turn SQLite's memory statistics off. Nothing here reads them, and
 * they take a process-wide mutex on every allocation SQLite makes: 12% of
 * the instructions of writing a counter (callgrind, 50,000 UPSERTs over
 * 10,000 keys: 15,400 to 13,500 a row). After SQLite has started it is too
 * late, and the statistics stay on (harmless: only slower). */
void db_global_init(void);

/* Open (create) the database for writing, its commits durable as `sync`
 * (enum db_sync) says: WAL, the schema, and this connection registered as
 * a writer in PATH-writers (buffered or durable) until db_close (or the
 * process's end). On failure (not a SQLite file, can't open or create it
 * or PATH-writers, too many writers) fills err and returns a negative
 * errno. */
int db_open_writer(db_t **out, const char *path, int sync, char *err, size_t errlen);

/* DB_DURABLE_SYNCED writer: make every transaction this connection has
 * committed so far durable (fdatasync of the WAL file, where a commit's pages are; a
 * checkpoint syncs the WAL before it copies them to the database). Safe
 * beside the writer's own use of the connection: it touches only its own
 * descriptor of the file. 0 (at once for the other kinds of writer: their
 * commits need no sync, or are not to be synced) or a negative errno (then
 * nothing committed since the last successful call can be assumed
 * durable). */
int db_wal_sync(db_t *d);

/* Open a read-only connection for GET /counters. */
int db_open_reader(db_t **out, const char *path, char *err, size_t errlen);

/* Open a connection that only checkpoints (see db_checkpoint). */
int db_open_checkpointer(db_t **out, const char *path, char *err, size_t errlen);

/* Copy what the WAL holds into the database file: a PASSIVE checkpoint,
 * which never blocks the writer. The writer's own connection never
 * checkpoints: a checkpoint fsyncs the database file, which took up to a
 * second on a busy disk, and every acknowledgement waiting for that commit
 * would wait too.
 * A WAL is written from its start again only when a transaction begins
 * with all of it copied, which a writer committing back to back never
 * leaves time for: it grew by 100 MB a second in durable mode, each sync
 * then growing the file. So past DB_WAL_RESTART frames the PASSIVE
 * checkpoint is followed by a RESTART one. That one holds the write lock
 * while it copies what the first left (the frames written meanwhile),
 * syncs, and waits for readers of older snapshots, so that the writer's
 * next transaction starts the WAL over (and syncs its header: one fsync
 * more on the writer's path per restart). Its wait is bounded by
 * DB_RESTART_WAIT_MS: a reader holding a snapshot longer (a backup, a
 * shell) makes it give up, -EBUSY, rather than stall the writer towards
 * its busy timeout. Returns 0 or a negative errno. */
int db_checkpoint(db_t *d);

/* Writer: how many frames the WAL held after this connection's last
 * commit (0 before any). */
int db_wal_frames(db_t *d);

/* Close; a writer also drops its registration (after its connection is
 * closed). NULL is fine. */
void db_close(db_t *d);

/* The last error's message. */
const char *db_errmsg(db_t *d);

/* BEGIN IMMEDIATE: take the write lock now (waiting up to DB_BUSY_MS), so
 * what is read in the transaction stays true until its commit. */
int db_begin(db_t *d);
int db_commit(db_t *d);
/* Roll back whatever is open (nothing if nothing is). */
void db_rollback(db_t *d);

/* Add delta to counter key (creating it), with the prepared UPSERT. The
 * caller has made sure the sum fits in int64; if it does not, the write
 * fails (-EIO, the statement changes nothing) instead of storing a REAL. */
int db_add(db_t *d, const char *key, size_t len, int64_t delta);

/* A row for db_add_rows: add delta to counter key[0..len). */
typedef struct db_row {
    const char *key;
    size_t len;
    int64_t delta;
} db_row_t;

#define DB_ROWS 64 /* rows per statement in db_add_rows */

/* db_add for n rows (a key may repeat), DB_ROWS of them to one statement:
 * a statement's own cost (step, halt, reset: about 2,500 instructions) is
 * paid once for them, and a row's write goes from 10,200 to 7,700
 * instructions at 16 rows (callgrind, 50,000 rows over 10,000 keys); 64
 * took 705-725 ns a row against 16's 770-780 (8,700 sorted rows over
 * 10,000 keys, 25 transactions, 2 runs). On failure the
 * rows of earlier statements stay written: the caller rolls the
 * transaction back. Returns 0 or a negative errno. */
int db_add_rows(db_t *d, const db_row_t *rows, size_t n);

/* The committed value of key: returns 1 and sets *v, 0 when absent. */
int db_value(db_t *d, const char *key, size_t len, int64_t *v);

/* *n = 1 when some counter is outside +-DB_GREEN ('red'), else 0: one
 * seek in the partial index, seeing this connection's open transaction.
 * Returns 0 or a negative errno (*n untouched). */
int db_red(db_t *d, int64_t *n);

/* Number of live buffered writers on this database other than this one
 * (any process, any PID namespace, on this machine's file system). Exact
 * until this connection's transaction ends when called inside a write
 * transaction (BEGIN IMMEDIATE): a writer registers only while it holds the
 * write lock. Writer connections only. */
int db_other_buffered(db_t *d, int64_t *n);

/* The idempotency key `key`, recorded after after_ms: returns 1 and sets
 * *fp and *status (200 or 422), 0 when there is none, or a negative errno.
 * Writer connections only. */
int db_idem_get(db_t *d, const char *key, size_t len, int64_t after_ms, int64_t *fp, int *status);

/* Record key (replacing an expired record of it) with the request's
 * fingerprint, its answer (200 or 422) and the time. Inside the transaction
 * that applies the request. Writer connections only. */
int db_idem_put(db_t *d, const char *key, size_t len, int64_t fp, int status, int64_t at_ms);

/* Delete up to DB_IDEM_SWEEP keys recorded at or before expired_ms, then the
 * oldest keys beyond max_keys. Sets *evicted (keys deleted for the bound)
 * and *kept (keys left). In a write transaction. Writer connections only. */
int db_idem_trim(db_t *d, int64_t expired_ms, int64_t max_keys, int64_t *evicted, int64_t *kept);

/* Counters with key > after, in key order, at most limit: calls fn for
 * each. Returns the number visited, or a negative errno. */
int db_page(db_t *d, const char *after, size_t after_len, int limit,
            void (*fn)(const char *key, size_t len, int64_t value, void *ctx), void *ctx);

/* The writer of the web nodes' stream (consume.c) records the ids (ms-seq)
 * of the entries it applied in incrementor_stream_applied, in the
 * transaction that applies them. db_stream_init creates the table;
 * db_stream_seen returns 1 if the id is recorded, 0 if not; db_stream_mark
 * records it; db_stream_prune forgets the ids below (ms, seq). Writer
 * connections; a negative errno on failure. */
int db_stream_init(db_t *d);
int db_stream_seen(db_t *d, uint64_t ms, uint64_t seq);
int db_stream_mark(db_t *d, uint64_t ms, uint64_t seq);
int db_stream_prune(db_t *d, uint64_t ms, uint64_t seq);

#endif
