#include "db.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct db {
    sqlite3 *h;
    int lockfd; /* writer: the registry file, holding this writer's slot (-1: none) */
    /* Durable writer: the WAL file, synced by db_wal_sync (the syncer
     * thread alone touches these after db_open_writer). */
    int walfd;
    char *wal_path;
    int wal_frames; /* writer: frames in the WAL after its last commit */
    sqlite3_stmt *begin, *commit, *rollback, *add, *add_rows, *get, *red, *page;
    sqlite3_stmt *idem_get, *idem_put, *idem_expire, *idem_count, *idem_evict;
};

/* A counter stays an integer. SQLite turns an integer overflow in
 * `value + ?` into a REAL and stores it, so an UPSERT that would take a
 * counter outside int64 must fail instead, whoever makes it (the rule of
 * flush.c is meant to make it never happen). Tables made here are STRICT:
 * SQLite itself refuses a REAL that is not a whole int64 in an INTEGER
 * column (SQLITE_CONSTRAINT_DATATYPE), for any writer, for 90 ns less per
 * row than the CHECK (INT64_CHECK) tables made by earlier versions, which
 * stay as they are (an UPSERT of 64 rows over 10,000 keys: 730 against
 * 600 ns a row; STRICT needs SQLite 3.37). A table with neither, made by
 * someone else, gets triggers instead (int64_triggers), which cost a
 * sub-program per row written. */
#define INT64_CHECK "CHECK(typeof(value) = 'integer')"

static const char int64_triggers[] =
    "CREATE TRIGGER IF NOT EXISTS incrementor_int64_ins BEFORE INSERT ON counters"
    " WHEN typeof(new.value) <> 'integer'"
    " BEGIN SELECT RAISE(ABORT, 'counter value outside int64 (or not an integer)'); END;"
    "CREATE TRIGGER IF NOT EXISTS incrementor_int64_upd BEFORE UPDATE OF value ON counters"
    " WHEN typeof(new.value) <> 'integer'"
    " BEGIN SELECT RAISE(ABORT, 'counter value outside int64 (or not an integer)'); END;";

/* The schema, created in one transaction.
 *
 * Whether any counter is outside +-DB_GREEN ('red', see flush.c) is asked
 * of the partial index incrementor_red, holding exactly those counters:
 * SQLite keeps it exact whoever writes, and a write costs one expression
 * more. Older versions counted them in incrementor_meta with triggers; a
 * trigger on counters makes every UPSERT a sub-program under a statement
 * journal (a copy of the page it changes), and dropping them cut a
 * counter's write from 13,500 to 10,300 instructions (callgrind, 50,000
 * UPSERTs over 10,000 keys). So the triggers go, and the old count is set
 * to 2^62 for good: an older writer still running on the database (or
 * started on it later: its triggers come back, counting from there) then
 * always sees red and stays on its slow path, exact; a zero or a missing
 * row would let it acknowledge what might not fit. */
static const char schema[] =
    "CREATE TABLE IF NOT EXISTS counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
    " WITHOUT ROWID, STRICT;"
    "CREATE TABLE IF NOT EXISTS incrementor_meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS incrementor_idempotency(key TEXT PRIMARY KEY,"
    " fp INTEGER NOT NULL, status INTEGER NOT NULL CHECK(status IN (200, 422)),"
    " at INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS incrementor_idempotency_at ON incrementor_idempotency(at);"
    "INSERT OR IGNORE INTO incrementor_meta VALUES('idempotency_keys',"
    " (SELECT count(*) FROM incrementor_idempotency));"
    "CREATE TRIGGER IF NOT EXISTS incrementor_idem_ins AFTER INSERT ON incrementor_idempotency"
    " BEGIN UPDATE incrementor_meta SET value = value + 1 WHERE name = 'idempotency_keys'; END;"
    "CREATE TRIGGER IF NOT EXISTS incrementor_idem_del AFTER DELETE ON incrementor_idempotency"
    " BEGIN UPDATE incrementor_meta SET value = value - 1 WHERE name = 'idempotency_keys'; END;"
    "CREATE INDEX IF NOT EXISTS incrementor_red ON counters(key) WHERE " DB_RED_WHERE ";"
    "DROP TRIGGER IF EXISTS incrementor_red_ins;"
    "DROP TRIGGER IF EXISTS incrementor_red_upd;"
    "DROP TRIGGER IF EXISTS incrementor_red_del;"
    "INSERT OR REPLACE INTO incrementor_meta VALUES('red', 4611686018427387904);";

static int map_rc(int rc)
{
    rc &= 0xff; /* extended codes to primary ones */
    return rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? -EBUSY : rc == SQLITE_NOMEM ? -ENOMEM : -EIO;
}

const char *db_errmsg(db_t *d)
{
    return d && d->h ? sqlite3_errmsg(d->h) : "no database";
}

static int prep(db_t *d, sqlite3_stmt **st, const char *sql)
{
    int rc = sqlite3_prepare_v3(d->h, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    return rc == SQLITE_OK ? 0 : map_rc(rc);
}

/* The UPSERT of DB_ROWS rows: "VALUES(?1, ?2), (?3, ?4), ...". */
static int prep_add_rows(db_t *d)
{
    static const char head[] = "INSERT INTO counters(key, value) VALUES(?,?)";
    static const char tail[] = " ON CONFLICT(key) DO UPDATE SET value = value + excluded.value";
    char sql[sizeof head + (DB_ROWS - 1) * (sizeof ",(?,?)" - 1) + sizeof tail];
    size_t n = sizeof head - 1;
    memcpy(sql, head, n);
    for (int i = 1; i < DB_ROWS; i++) {
        memcpy(sql + n, ",(?,?)", sizeof ",(?,?)" - 1);
        n += sizeof ",(?,?)" - 1;
    }
    memcpy(sql + n, tail, sizeof tail);
    return prep(d, &d->add_rows, sql);
}

/* Run a statement to its end and reset it. */
static int run(db_t *d, sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    (void)d;
    return rc == SQLITE_DONE ? 0 : map_rc(rc);
}

/* Run a statement that yields one integer. */
static int one_int(sqlite3_stmt *st, int64_t *v)
{
    int rc = sqlite3_step(st);
    int found = rc == SQLITE_ROW;
    if (found)
        *v = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return found ? 1 : rc == SQLITE_DONE ? 0 : map_rc(rc);
}

void db_global_init(void)
{
    /* SQLITE_MISUSE once SQLite has started: then they stay on, see db.h. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

static int open_common(db_t **out, const char *path, int flags, char *err, size_t errlen)
{
    db_t *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    d->lockfd = -1;
    d->walfd = -1;
    int rc = sqlite3_open_v2(path, &d->h, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, d->h ? sqlite3_errmsg(d->h) : sqlite3_errstr(rc));
        db_close(d);
        return -EIO;
    }
    sqlite3_busy_timeout(d->h, DB_BUSY_MS);
    *out = d;
    return 0;
}

/* Exec SQL text; on failure fill err with the path and SQLite's message. */
static int exec(db_t *d, const char *path, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(d->h, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return map_rc(rc);
    }
    return 0;
}

/* ---- the registry of live writers ----
 *
 * A file beside the database, PATH-writers, whose bytes are slots: writer
 * number s holds an exclusive OFD lock (fcntl F_OFD_SETLK) on byte 2s for
 * as long as it lives, and a buffered writer on byte 2s+1 too (one lock on
 * both). The kernel drops the locks when the process ends however it ends,
 * keeps them while it is stopped, and shows them to every process that opens
 * the same file, in any PID namespace: a writer is live exactly while its
 * lock is held. (A PID said nothing across namespaces: a live writer in
 * another container could look dead, and two containers' writers could
 * have the same PID.) OFD locks belong to an open file description, not to
 * a process, so two writers in one process are two writers too, and closing
 * some other descriptor of the file does not drop them as it would POSIX
 * locks. */

/* Take a free slot. Called inside a write transaction, see db_other_buffered. */
static int take_slot(db_t *d, const char *path, int buffered, char *err, size_t errlen)
{
    for (int s = 0; s < DB_WRITERS_MAX; s++) {
        struct flock fl = {.l_type = F_WRLCK,
                           .l_whence = SEEK_SET,
                           .l_start = 2 * (off_t)s,
                           .l_len = buffered ? 2 : 1};
        if (fcntl(d->lockfd, F_OFD_SETLK, &fl) == 0)
            return 0;
        if (errno != EAGAIN && errno != EACCES) {
            int e = errno;
            snprintf(err, errlen, "%s-writers: cannot lock: %s", path, strerror(e));
            return -e;
        }
    }
    snprintf(err, errlen, "%s: %d incrementor processes already use it", path, DB_WRITERS_MAX);
    return -EBUSY;
}

/* Register this process as a writer (see above). */
static int register_writer(db_t *d, const char *path, int buffered, char *err, size_t errlen)
{
    char lp[4096];
    if (snprintf(lp, sizeof lp, "%s-writers", path) >= (int)sizeof lp) {
        snprintf(err, errlen, "%s: path too long", path);
        return -ENAMETOOLONG;
    }
    d->lockfd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (d->lockfd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", lp, strerror(e));
        return -e;
    }
    /* The slot is taken while this connection holds the database's write
     * lock, as every count of db_other_buffered is made: so a writer that
     * counted the others before we registered has committed before we read
     * the database's state (svc_init reads 'red' after this), and one that
     * counts after sees us. */
    int rc = exec(d, path, "BEGIN IMMEDIATE", err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = take_slot(d, path, buffered, err, errlen)) < 0 ||
        (rc = exec(d, path, "COMMIT", err, errlen)) < 0) {
        sqlite3_exec(d->h, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    return 0;
}

/* Add to *n the writers other than this one whose locks in [lo, hi) cover
 * an odd byte (the buffered ones). F_OFD_GETLK reports one conflicting lock
 * (ours never conflict), not necessarily the lowest: count it, look left of
 * it, then go on right of it. Each writer's lock is one range, since the
 * kernel merges locks only of the same owner: so every other writer is
 * counted once. */
static int count_buffered(int fd, off_t lo, off_t hi, int64_t *n)
{
    while (lo < hi) {
        struct flock fl = {
            .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = lo, .l_len = hi - lo};
        if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
            return -errno;
        if (fl.l_type == F_UNLCK)
            return 0;
        off_t s = fl.l_start < lo ? lo : fl.l_start;
        off_t e = fl.l_len == 0 || fl.l_start + fl.l_len > hi ? hi : fl.l_start + fl.l_len;
        if (e <= s)
            return -EIO; /* not a lock inside [lo, hi): can't be, but never loop on it */
        if (e - s >= 2 || (s & 1))
            (*n)++;
        int rc = count_buffered(fd, lo, s, n);
        if (rc < 0)
            return rc;
        lo = e;
    }
    return 0;
}

/* The counters table neither STRICT with an INTEGER value nor with
 * INT64_CHECK (made elsewhere) gets the triggers. In the schema's
 * transaction. 0 or a negative errno. */
static int int64_guard(db_t *d, const char *path, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        d->h,
        "SELECT (SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'counters'),"
        " (SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = 'counters'),"
        " (SELECT type FROM pragma_table_info('counters') WHERE name = 'value')",
        -1, &st, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(d->h));
        return map_rc(rc);
    }
    int guarded = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *sql = (const char *)sqlite3_column_text(st, 0);
        const char *type = (const char *)sqlite3_column_text(st, 2);
        guarded = (sql && strstr(sql, INT64_CHECK)) ||
                  (sqlite3_column_int(st, 1) == 1 && type && strcasecmp(type, "INTEGER") == 0);
    }
    sqlite3_finalize(st);
    return guarded ? 0 : exec(d, path, int64_triggers, err, errlen);
}

/* The writer's WAL hook, after each commit: how many frames the WAL holds. */
static int count_frames(void *arg, sqlite3 *h, const char *name, int frames)
{
    (void)h;
    (void)name;
    ((db_t *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

int db_open_writer(db_t **out, const char *path, int sync, char *err, size_t errlen)
{
    int durable = sync != DB_BUFFERED;
    db_t *d = NULL;
    int rc = open_common(&d, path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, err, errlen);
    if (rc < 0)
        return rc;
    /* The first statement reads the file: this is where a file that is not
     * a database is found out. */
    if ((rc = exec(d, path, "PRAGMA journal_mode=WAL", err, errlen)) < 0 ||
        (rc =
             exec(d, path,
                  sync == DB_DURABLE_FULL ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                  err, errlen)) < 0 ||
        (rc = exec(d, path, "BEGIN IMMEDIATE", err, errlen)) < 0)
        goto err;
    if ((rc = exec(d, path, schema, err, errlen)) < 0 ||
        (rc = int64_guard(d, path, err, errlen)) < 0 ||
        (rc = exec(d, path, "COMMIT", err, errlen)) < 0) {
        sqlite3_exec(d->h, "ROLLBACK", NULL, NULL, NULL);
        goto err;
    }
    if ((rc = register_writer(d, path, !durable, err, errlen)) < 0)
        goto err;
    /* Synced by the caller: a commit writes the WAL without syncing it
     * (NORMAL), and db_wal_sync makes it durable, off the writer's path
     * (flush.c). The file exists: the schema's transaction wrote it. */
    if (sync == DB_DURABLE_SYNCED) {
        size_t n = strlen(path) + sizeof "-wal";
        if (!(d->wal_path = malloc(n))) {
            snprintf(err, errlen, "out of memory");
            rc = -ENOMEM;
            goto err;
        }
        snprintf(d->wal_path, n, "%s-wal", path);
        if ((rc = db_wal_sync(d)) < 0) {
            snprintf(err, errlen, "%s: %s", d->wal_path, strerror(-rc));
            goto err;
        }
    }
    /* No automatic checkpoint (a WAL hook replaces it): that is the
     * checkpointer's job, see db_checkpoint. The hook counts the frames. */
    sqlite3_wal_hook(d->h, count_frames, d);
    if ((rc = prep(d, &d->begin, "BEGIN IMMEDIATE")) < 0 ||
        (rc = prep(d, &d->commit, "COMMIT")) < 0 || (rc = prep(d, &d->rollback, "ROLLBACK")) < 0 ||
        (rc = prep(d, &d->add,
                   "INSERT INTO counters(key, value) VALUES(?1, ?2)"
                   " ON CONFLICT(key) DO UPDATE SET value = value + excluded.value")) < 0 ||
        (rc = prep_add_rows(d)) < 0 ||
        (rc = prep(d, &d->get, "SELECT value FROM counters WHERE key = ?1")) < 0 ||
        (rc = prep(d, &d->red, DB_RED_QUERY)) < 0 ||
        (rc = prep(d, &d->idem_get,
                   "SELECT fp, status FROM incrementor_idempotency"
                   " WHERE key = ?1 AND at > ?2")) < 0 ||
        (rc = prep(d, &d->idem_put,
                   "INSERT INTO incrementor_idempotency(key, fp, status, at)"
                   " VALUES(?1, ?2, ?3, ?4) ON CONFLICT(key) DO UPDATE SET fp = excluded.fp,"
                   " status = excluded.status, at = excluded.at")) < 0 ||
        (rc = prep(d, &d->idem_expire,
                   "DELETE FROM incrementor_idempotency WHERE rowid IN (SELECT rowid FROM"
                   " incrementor_idempotency WHERE at <= ?1 ORDER BY at LIMIT ?2)")) < 0 ||
        (rc = prep(d, &d->idem_count,
                   "SELECT value FROM incrementor_meta"
                   " WHERE name = 'idempotency_keys'")) < 0 ||
        (rc = prep(d, &d->idem_evict,
                   "DELETE FROM incrementor_idempotency WHERE rowid IN (SELECT rowid FROM"
                   " incrementor_idempotency ORDER BY at, rowid LIMIT ?1)")) < 0) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(d->h));
        goto err;
    }
    *out = d;
    return 0;
err:
    db_close(d);
    return rc;
}

int db_open_reader(db_t **out, const char *path, char *err, size_t errlen)
{
    db_t *d = NULL;
    int rc = open_common(&d, path, SQLITE_OPEN_READONLY, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = prep(d, &d->get, "SELECT value FROM counters WHERE key = ?1")) < 0 ||
        (rc = prep(d, &d->page,
                   "SELECT key, value FROM counters WHERE key > ?1"
                   " ORDER BY key LIMIT ?2")) < 0) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(d->h));
        db_close(d);
        return rc;
    }
    *out = d;
    return 0;
}

int db_open_checkpointer(db_t **out, const char *path, char *err, size_t errlen)
{
    int rc = open_common(out, path, SQLITE_OPEN_READWRITE, err, errlen);
    if (rc < 0)
        return rc;
    /* Only a RESTART checkpoint waits (PASSIVE never does): briefly. */
    sqlite3_busy_timeout((*out)->h, DB_RESTART_WAIT_MS);
    /* A connection finds the WAL when it first reads: until then a
     * checkpoint on it does nothing (and says so only by its log size, -1),
     * and this connection makes no other call. */
    if ((rc = exec(*out, path, "SELECT 1 FROM sqlite_master", err, errlen)) < 0) {
        db_close(*out);
        *out = NULL;
    }
    return rc;
}

int db_checkpoint(db_t *d)
{
    int frames = 0;
    int rc = sqlite3_wal_checkpoint_v2(d->h, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, NULL);
    if (rc == SQLITE_OK && frames >= DB_WAL_RESTART)
        rc = sqlite3_wal_checkpoint_v2(d->h, NULL, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
    return rc == SQLITE_OK ? 0 : map_rc(rc);
}

int db_wal_frames(db_t *d)
{
    return d->wal_frames;
}

void db_close(db_t *d)
{
    if (!d)
        return;
    sqlite3_stmt *all[] = {d->begin,       d->commit,     d->rollback,  d->add,      d->add_rows,
                           d->get,         d->red,        d->page,      d->idem_get, d->idem_put,
                           d->idem_expire, d->idem_count, d->idem_evict};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sqlite3_finalize(all[i]);
    sqlite3_close(d->h);
    /* Unregistered only now: until its connection is closed, a writer could
     * still commit what it holds. */
    if (d->lockfd >= 0)
        close(d->lockfd);
    if (d->walfd >= 0)
        close(d->walfd);
    free(d->wal_path);
    free(d);
}

int db_wal_sync(db_t *d)
{
    /* The WAL lives as long as a connection to the database is open (each
     * holds a shared lock on it, and only the last one to close deletes
     * the WAL), so our writer's keeps it. Should it be replaced all the
     * same, the fd is opened again: a sync of a file no longer in use would
     * make nothing durable. */
    struct stat now, had;
    if (!d->wal_path)
        return 0;
    if (stat(d->wal_path, &now) < 0)
        return -errno;
    if (d->walfd >= 0 &&
        (fstat(d->walfd, &had) < 0 || had.st_ino != now.st_ino || had.st_dev != now.st_dev)) {
        close(d->walfd);
        d->walfd = -1;
    }
    if (d->walfd < 0 && (d->walfd = open(d->wal_path, O_RDONLY | O_CLOEXEC)) < 0)
        return -errno;
    return fdatasync(d->walfd) < 0 ? -errno : 0;
}

int db_begin(db_t *d)
{
    return run(d, d->begin);
}

int db_commit(db_t *d)
{
    return run(d, d->commit);
}

void db_rollback(db_t *d)
{
    if (!sqlite3_get_autocommit(d->h))
        run(d, d->rollback);
}

int db_add(db_t *d, const char *key, size_t len, int64_t delta)
{
    sqlite3_bind_text(d->add, 1, key, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(d->add, 2, delta);
    return run(d, d->add);
}

int db_add_rows(db_t *d, const db_row_t *rows, size_t n)
{
    size_t i = 0;
    for (; n - i >= DB_ROWS; i += DB_ROWS) {
        for (int j = 0; j < DB_ROWS; j++) {
            const db_row_t *r = &rows[i + (size_t)j];
            sqlite3_bind_text(d->add_rows, 2 * j + 1, r->key, (int)r->len, SQLITE_STATIC);
            sqlite3_bind_int64(d->add_rows, 2 * j + 2, r->delta);
        }
        int rc = run(d, d->add_rows);
        if (rc < 0)
            return rc;
    }
    for (; i < n; i++) {
        int rc = db_add(d, rows[i].key, rows[i].len, rows[i].delta);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int db_value(db_t *d, const char *key, size_t len, int64_t *v)
{
    sqlite3_bind_text(d->get, 1, key, (int)len, SQLITE_STATIC);
    return one_int(d->get, v);
}

int db_red(db_t *d, int64_t *n)
{
    /* One row always: EXISTS. The partial index answers in one seek. */
    int rc = one_int(d->red, n);
    return rc < 0 ? rc : 0;
}

int db_other_buffered(db_t *d, int64_t *n)
{
    *n = 0;
    return count_buffered(d->lockfd, 0, 2 * (off_t)DB_WRITERS_MAX, n);
}

int db_idem_get(db_t *d, const char *key, size_t len, int64_t after_ms, int64_t *fp, int *status)
{
    sqlite3_bind_text(d->idem_get, 1, key, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(d->idem_get, 2, after_ms);
    int rc = sqlite3_step(d->idem_get);
    int found = rc == SQLITE_ROW;
    if (found) {
        *fp = sqlite3_column_int64(d->idem_get, 0);
        *status = sqlite3_column_int(d->idem_get, 1);
    }
    sqlite3_reset(d->idem_get);
    sqlite3_clear_bindings(d->idem_get);
    return found ? 1 : rc == SQLITE_DONE ? 0 : map_rc(rc);
}

int db_idem_put(db_t *d, const char *key, size_t len, int64_t fp, int status, int64_t at_ms)
{
    sqlite3_bind_text(d->idem_put, 1, key, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(d->idem_put, 2, fp);
    sqlite3_bind_int(d->idem_put, 3, status);
    sqlite3_bind_int64(d->idem_put, 4, at_ms);
    return run(d, d->idem_put);
}

int db_idem_trim(db_t *d, int64_t expired_ms, int64_t max_keys, int64_t *evicted, int64_t *kept)
{
    int64_t n = 0;
    *evicted = 0;
    sqlite3_bind_int64(d->idem_expire, 1, expired_ms);
    sqlite3_bind_int64(d->idem_expire, 2, DB_IDEM_SWEEP);
    int rc = run(d, d->idem_expire);
    if (rc < 0 || (rc = one_int(d->idem_count, &n)) < 0)
        return rc;
    if (n > max_keys) {
        sqlite3_bind_int64(d->idem_evict, 1, n - max_keys);
        if ((rc = run(d, d->idem_evict)) < 0)
            return rc;
        *evicted = sqlite3_changes(d->h);
        n -= *evicted;
    }
    *kept = n;
    return 0;
}

int db_page(db_t *d, const char *after, size_t after_len, int limit,
            void (*fn)(const char *key, size_t len, int64_t value, void *ctx), void *ctx)
{
    int rc, n = 0;
    sqlite3_bind_text(d->page, 1, after, (int)after_len, SQLITE_STATIC);
    sqlite3_bind_int(d->page, 2, limit);
    while ((rc = sqlite3_step(d->page)) == SQLITE_ROW) {
        fn((const char *)sqlite3_column_text(d->page, 0), (size_t)sqlite3_column_bytes(d->page, 0),
           sqlite3_column_int64(d->page, 1), ctx);
        n++;
    }
    sqlite3_reset(d->page);
    sqlite3_clear_bindings(d->page);
    return rc == SQLITE_DONE ? n : map_rc(rc);
}

/* ---- the writer of the web nodes' stream (consume.c) ---- */

int db_stream_init(db_t *d)
{
    int rc = sqlite3_exec(d->h,
                          "CREATE TABLE IF NOT EXISTS incrementor_stream_applied("
                          "ms INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(ms, seq))"
                          " WITHOUT ROWID;",
                          NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : map_rc(rc);
}

/* Run one statement on an entry id (ms, seq). Returns 1 if it gave a row, 0
 * if not, or a negative errno. */
static int stream_stmt(db_t *d, const char *sql, uint64_t ms, uint64_t seq)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(d->h, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return map_rc(rc);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)ms);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
    rc = sqlite3_step(st);
    int out = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : map_rc(rc);
    sqlite3_finalize(st);
    return out;
}

int db_stream_seen(db_t *d, uint64_t ms, uint64_t seq)
{
    return stream_stmt(d, "SELECT 1 FROM incrementor_stream_applied WHERE ms = ?1 AND seq = ?2", ms,
                       seq);
}

int db_stream_mark(db_t *d, uint64_t ms, uint64_t seq)
{
    int rc = stream_stmt(d, "INSERT INTO incrementor_stream_applied VALUES(?1, ?2)", ms, seq);
    return rc < 0 ? rc : 0;
}

int db_stream_prune(db_t *d, uint64_t ms, uint64_t seq)
{
    int rc = stream_stmt(d,
                         "DELETE FROM incrementor_stream_applied"
                         " WHERE ms < ?1 OR (ms = ?1 AND seq < ?2)",
                         ms, seq);
    return rc < 0 ? rc : 0;
}
