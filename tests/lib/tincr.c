/* tincr: clients that POST increments to the incrementor and keep what was
 * acknowledged, and a read of the counters its database holds; for the
 * incrementor's tests, one process or web nodes behind Redis. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tlib.h"

#define RESP_MS 10000 /* an answer's bound (sanitizers, a busy machine) */

static int64_t value(tincr_client_t *c)
{
    return c->positive ? 1 + rand_r(&c->seed) % 100 : rand_r(&c->seed) % 20001 - 10000;
}

/* Send increments over one keep-alive connection (reconnecting when the
 * server closes it) until *stop, or until the server is gone. Every fourth
 * request is a JSON batch of two keys. */
static void *client_main(void *arg)
{
    tincr_client_t *c = arg;
    int fd = -1, nk = c->nkeys;
    char req[512], body[128];
    thttp_resp_t r = {0};
    while (!*c->stop) {
        if (fd < 0 && (fd = tconn_open(c->port)) < 0)
            break; /* nobody listens any more */
        int k1 = rand_r(&c->seed) % nk, k2 = (k1 + 1 + rand_r(&c->seed) % (nk - 1)) % nk;
        int64_t v1 = value(c), v2 = value(c);
        int batch = rand_r(&c->seed) % 4 == 0, n;
        if (batch)
            n = snprintf(body, sizeof body, "{\"k%d\": %lld, \"k%d\": %lld}", k1, (long long)v1, k2,
                         (long long)v2);
        else
            n = snprintf(body, sizeof body, "key=k%d&value=%lld", k1, (long long)v1);
        snprintf(req, sizeof req,
                 "POST /increment HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\n"
                 "Content-Length: %d\r\n\r\n%s",
                 batch ? "application/json" : "application/x-www-form-urlencoded", n, body);
        int rc = thttp_do(fd, req, &r, RESP_MS);
        if (rc == 0 && r.status == 200) {
            c->acked[k1] += v1;
            if (batch)
                c->acked[k2] += v2;
            c->ok++;
        } else if (rc == 0) {
            c->refused++; /* answered, not 200: not applied */
        } else {
            c->inflight[k1] += v1;
            if (batch)
                c->inflight[k2] += v2;
            c->lost++;
        }
        thttp_free(&r);
        if (rc < 0 || thttp_has_header(&r, "Connection: close")) {
            close(fd);
            fd = -1;
        }
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

int tincr_start(tincr_load_t *l, const int *ports, int nports, int nkeys, int positive,
                unsigned seed)
{
    memset(l, 0, sizeof *l);
    if (nports < 1 || nkeys < 2 || nkeys > TINCR_KEYS_MAX)
        return -1;
    l->nkeys = nkeys;
    for (int i = 0; i < TINCR_CLIENTS; i++) {
        l->c[i] = (tincr_client_t){.port = ports[i % nports],
                                   .nkeys = nkeys,
                                   .positive = positive,
                                   .stop = &l->stop,
                                   .seed = seed * 100 + (unsigned)i};
        if (pthread_create(&l->tid[i], NULL, client_main, &l->c[i]) != 0) {
            tincr_stop(l, NULL, NULL);
            return -1;
        }
        l->started++;
    }
    return 0;
}

long tincr_stop(tincr_load_t *l, int64_t *acked, int64_t *inflight)
{
    long ok = 0;
    l->stop = 1;
    for (int i = 0; i < l->started; i++) {
        pthread_join(l->tid[i], NULL);
        for (int k = 0; k < l->nkeys; k++) {
            if (acked)
                acked[k] += l->c[i].acked[k];
            if (inflight)
                inflight[k] += l->c[i].inflight[k];
        }
        ok += l->c[i].ok;
    }
    l->started = 0;
    return ok;
}

int tincr_db_read(const char *path, int64_t *v, int nkeys)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st;
    int rows = 0;
    memset(v, 0, (size_t)nkeys * sizeof v[0]);
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto err;
    sqlite3_busy_timeout(h, 5000);
    if (sqlite3_prepare_v2(h, "SELECT key, value FROM counters", -1, &st, NULL) != SQLITE_OK)
        goto err;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        int i;
        if (k && sscanf(k, "k%d", &i) == 1 && i >= 0 && i < nkeys)
            v[i] = sqlite3_column_int64(st, 1);
        rows++;
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    return rows;
err:
    sqlite3_close(h); /* a failed open still gives a handle to close; NULL is a no-op */
    return -1;
}

int tincr_db_exec(const char *path, const char *sql)
{
    sqlite3 *h = NULL;
    int rc = sqlite3_open(path, &h);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(h, 5000);
        rc = sqlite3_exec(h, sql, NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK)
        fprintf(stderr, "tincr_db_exec %s: %s\n", sql, h ? sqlite3_errmsg(h) : sqlite3_errstr(rc));
    sqlite3_close(h);
    return rc == SQLITE_OK ? 0 : -1;
}

int tincr_db_text(const char *path, const char *sql, char *buf, size_t cap)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto err;
    sqlite3_busy_timeout(h, 5000);
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW)
        goto err;
    const unsigned char *t = sqlite3_column_text(st, 0);
    snprintf(buf, cap, "%s", t ? (const char *)t : "");
    sqlite3_finalize(st);
    sqlite3_close(h);
    return 0;
err:
    sqlite3_finalize(st); /* NULL is a no-op, as for sqlite3_close */
    sqlite3_close(h);
    return -1;
}
