#include "db.h"

#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define G "2305843009213693952" /* DB_GREEN */

struct db {
    sqlite3 *h;
    int writer;
    sqlite3_stmt *begin, *commit, *rollback, *add, *get, *red, *others, *page;
};

/* The schema, created in one transaction so that the 'red' count and the
 * triggers keeping it exact appear together. */
static const char schema[] =
    "CREATE TABLE IF NOT EXISTS counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS incrementor_meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS incrementor_writers(pid INTEGER PRIMARY KEY,"
    " buffered INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO incrementor_meta VALUES('red',"
    " (SELECT count(*) FROM counters WHERE value NOT BETWEEN -" G " AND " G "));"
    "CREATE TRIGGER IF NOT EXISTS incrementor_red_ins AFTER INSERT ON counters"
    " WHEN new.value NOT BETWEEN -" G " AND " G
    " BEGIN UPDATE incrementor_meta SET value = value + 1 WHERE name = 'red'; END;"
    "CREATE TRIGGER IF NOT EXISTS incrementor_red_del AFTER DELETE ON counters"
    " WHEN old.value NOT BETWEEN -" G " AND " G
    " BEGIN UPDATE incrementor_meta SET value = value - 1 WHERE name = 'red'; END;"
    "CREATE TRIGGER IF NOT EXISTS incrementor_red_upd AFTER UPDATE OF value ON counters"
    " WHEN (old.value NOT BETWEEN -" G " AND " G ") <> (new.value NOT BETWEEN -" G " AND " G ")"
    " BEGIN UPDATE incrementor_meta SET value = value +"
    " (CASE WHEN new.value NOT BETWEEN -" G " AND " G " THEN 1 ELSE -1 END)"
    " WHERE name = 'red'; END;";

static int map_rc(int rc)
{
    rc &= 0xff; /* extended codes to primary ones */
    return rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? -EBUSY
           : rc == SQLITE_NOMEM                    ? -ENOMEM
                                                   : -EIO;
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

static int open_common(db_t **out, const char *path, int flags, char *err, size_t errlen)
{
    db_t *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
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

/* Register this process as a writer, forgetting the ones that died. */
static int register_writer(db_t *d, const char *path, int buffered, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int64_t live = 0;
    int rc = exec(d, path, "BEGIN IMMEDIATE", err, errlen);
    if (rc < 0)
        return rc;
    rc = prep(d, &st, "SELECT pid FROM incrementor_writers");
    if (rc < 0)
        goto err;
    char sql[160];
    while (sqlite3_step(st) == SQLITE_ROW) {
        int64_t pid = sqlite3_column_int64(st, 0);
        /* A dead writer acknowledges nothing more; PID reuse only makes
         * the others more careful (see flush.c). */
        if (pid > 0 && pid != getpid() && kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
            snprintf(sql, sizeof sql, "DELETE FROM incrementor_writers WHERE pid = %lld",
                     (long long)pid);
            if ((rc = exec(d, path, sql, err, errlen)) < 0)
                goto err;
        } else {
            live++;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (live >= DB_WRITERS_MAX) {
        snprintf(err, errlen, "%s: %d incrementor processes already use it", path,
                 DB_WRITERS_MAX);
        rc = -EBUSY;
        goto err;
    }
    snprintf(sql, sizeof sql, "INSERT OR REPLACE INTO incrementor_writers VALUES(%lld, %d)",
             (long long)getpid(), buffered);
    if ((rc = exec(d, path, sql, err, errlen)) < 0 || (rc = exec(d, path, "COMMIT", err, errlen)) < 0)
        goto err;
    return 0;
err:
    sqlite3_finalize(st);
    sqlite3_exec(d->h, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int db_open_writer(db_t **out, const char *path, int durable, char *err, size_t errlen)
{
    db_t *d = NULL;
    int rc = open_common(&d, path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, err, errlen);
    if (rc < 0)
        return rc;
    /* The first statement reads the file: this is where a file that is not
     * a database is found out. */
    if ((rc = exec(d, path, "PRAGMA journal_mode=WAL", err, errlen)) < 0 ||
        (rc = exec(d, path, durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                   err, errlen)) < 0 ||
        (rc = exec(d, path, "BEGIN IMMEDIATE", err, errlen)) < 0)
        goto err;
    if ((rc = exec(d, path, schema, err, errlen)) < 0 ||
        (rc = exec(d, path, "COMMIT", err, errlen)) < 0) {
        sqlite3_exec(d->h, "ROLLBACK", NULL, NULL, NULL);
        goto err;
    }
    if ((rc = register_writer(d, path, !durable, err, errlen)) < 0)
        goto err;
    sqlite3_wal_autocheckpoint(d->h, 0); /* the checkpointer's job, see db_checkpoint */
    d->writer = 1;
    if ((rc = prep(d, &d->begin, "BEGIN IMMEDIATE")) < 0 ||
        (rc = prep(d, &d->commit, "COMMIT")) < 0 ||
        (rc = prep(d, &d->rollback, "ROLLBACK")) < 0 ||
        (rc = prep(d, &d->add, "INSERT INTO counters(key, value) VALUES(?1, ?2)"
                               " ON CONFLICT(key) DO UPDATE SET value = value + excluded.value")) < 0 ||
        (rc = prep(d, &d->get, "SELECT value FROM counters WHERE key = ?1")) < 0 ||
        (rc = prep(d, &d->red, "SELECT value FROM incrementor_meta WHERE name = 'red'")) < 0 ||
        (rc = prep(d, &d->others, "SELECT count(*) FROM incrementor_writers"
                                  " WHERE pid <> ?1 AND buffered")) < 0) {
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
        (rc = prep(d, &d->page, "SELECT key, value FROM counters WHERE key > ?1"
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
    return open_common(out, path, SQLITE_OPEN_READWRITE, err, errlen);
}

int db_checkpoint(db_t *d)
{
    int rc = sqlite3_wal_checkpoint_v2(d->h, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return rc == SQLITE_OK ? 0 : map_rc(rc);
}

void db_close(db_t *d)
{
    if (!d)
        return;
    if (d->writer) {
        char sql[96];
        snprintf(sql, sizeof sql, "DELETE FROM incrementor_writers WHERE pid = %lld",
                 (long long)getpid());
        sqlite3_exec(d->h, sql, NULL, NULL, NULL);
    }
    sqlite3_stmt *all[] = {d->begin, d->commit, d->rollback, d->add, d->get, d->red, d->others,
                           d->page};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sqlite3_finalize(all[i]);
    sqlite3_close(d->h);
    free(d);
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

int db_value(db_t *d, const char *key, size_t len, int64_t *v)
{
    sqlite3_bind_text(d->get, 1, key, (int)len, SQLITE_STATIC);
    return one_int(d->get, v);
}

int db_red(db_t *d, int64_t *n)
{
    int rc = one_int(d->red, n);
    if (rc == 0)
        *n = 0;
    return rc < 0 ? rc : 0;
}

int db_other_buffered(db_t *d, int64_t *n)
{
    sqlite3_bind_int64(d->others, 1, getpid());
    int rc = one_int(d->others, n);
    return rc < 0 ? rc : 0;
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
