#include "workload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"

/* Has the user given this header with -H? */
static int has_header(const lg_opts_t *o, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < o->nheaders; i++)
        if (strncasecmp(o->headers[i], name, n) == 0 && o->headers[i][n] == ':')
            return 1;
    return 0;
}

/* The request line's end and the headers every HTTP request carries. */
static int http_common(buf_t *b, const lg_opts_t *o)
{
    int rc = 0;
    if (!has_header(o, "Host"))
        rc |= buf_printf(b, "Host: %s%s%s:%d\r\n", strchr(o->host, ':') ? "[" : "", o->host,
                         strchr(o->host, ':') ? "]" : "", o->port);
    for (size_t i = 0; i < o->nheaders; i++)
        rc |= buf_printf(b, "%s\r\n", o->headers[i]);
    return rc;
}

static int add_variant(lg_workload_t *w, buf_t *b, unsigned weight)
{
    lg_variant_t *v = &w->v[w->n];
    v->bytes = malloc(buf_used(b));
    if (!v->bytes)
        return -ENOMEM;
    memcpy(v->bytes, buf_head(b), buf_used(b));
    v->len = buf_used(b);
    v->weight = weight;
    w->total_weight += weight;
    if (v->len > w->max_len)
        w->max_len = v->len;
    w->n++;
    return 0;
}

int workload_build(lg_workload_t *w, const lg_opts_t *o, char *err, size_t errlen)
{
    buf_t b = {0};
    int rc = -ENOMEM;
    memset(w, 0, sizeof *w);
    size_t cap = o->proto == LG_LINE ? o->nmix : o->npaths;
    w->v = calloc(cap ? cap : 1, sizeof *w->v);
    if (!w->v)
        goto err;

    if (o->increment_keys) {
        w->incr_keys = o->increment_keys;
        w->incr_max = o->increment_max;
        w->incr_positive = o->increment_positive;
        if (buf_printf(&b, "POST /increment HTTP/1.1\r\n") < 0 || http_common(&b, o) < 0 ||
            buf_printf(&b, "Content-Type: application/x-www-form-urlencoded\r\n"
                           "Content-Length: ") < 0)
            goto err;
        w->incr_head = malloc(buf_used(&b));
        if (!w->incr_head)
            goto err;
        memcpy(w->incr_head, buf_head(&b), buf_used(&b));
        w->incr_head_len = buf_used(&b);
        /* Content-Length (<= 3 digits), blank line, "key=k<10 digits>&value=-<10 digits>". */
        w->max_len = w->incr_head_len + 3 + 4 + 14 + 18;
        w->incr_expect.kind = CHECK_HTTP;
        buf_free(&b);
        return 0;
    }

    if (o->proto == LG_LINE) {
        w->random_pick = 1;
        for (size_t i = 0; i < o->nmix; i++) {
            b.off = b.len = 0;
            if (check_expect_line(&w->v[w->n].expect, o->mix[i].cmd) < 0) {
                snprintf(err, errlen, "bad --mix command '%s'", o->mix[i].cmd);
                rc = -EINVAL;
                goto err;
            }
            if (buf_printf(&b, "%s\n", o->mix[i].cmd) < 0 ||
                add_variant(w, &b, o->mix[i].weight) < 0)
                goto err;
        }
    } else {
        for (size_t i = 0; i < o->npaths; i++) {
            b.off = b.len = 0;
            lg_variant_t *v = &w->v[w->n];
            check_expect_http(&v->expect, o->method, o->paths[i], v->store);
            if (buf_printf(&b, "%s %s HTTP/1.1\r\n", o->method, o->paths[i]) < 0 ||
                http_common(&b, o) < 0)
                goto err;
            if ((o->body || strcmp(o->method, "POST") == 0 || strcmp(o->method, "PUT") == 0) &&
                !has_header(o, "Content-Length") &&
                buf_printf(&b, "Content-Length: %zu\r\n", o->body_len) < 0)
                goto err;
            if (buf_append(&b, "\r\n", 2) < 0 ||
                (o->body_len && buf_append(&b, o->body, o->body_len) < 0))
                goto err;
            if (add_variant(w, &b, 1) < 0)
                goto err;
        }
    }
    buf_free(&b);
    return 0;
err:
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory building the requests");
    buf_free(&b);
    workload_free(w);
    return rc;
}

void workload_free(lg_workload_t *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->v[i].bytes);
    free(w->v);
    free(w->incr_head);
    memset(w, 0, sizeof *w);
}

/* Decimal digits of v, written backwards from end; returns the start. */
static char *put_u64(char *end, uint64_t v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

size_t workload_increment(const lg_workload_t *w, char *out, unsigned key, int value)
{
    char body[48], *e = body + sizeof body, *p = e;
    uint64_t mag = value < 0 ? (uint64_t)(-(int64_t)value) : (uint64_t)value;
    p = put_u64(p, mag);
    if (value < 0)
        *--p = '-';
    p -= 7;
    memcpy(p, "&value=", 7);
    p = put_u64(p, key);
    p -= 5;
    memcpy(p, "key=k", 5);
    size_t blen = (size_t)(e - p);

    char *o = out;
    memcpy(o, w->incr_head, w->incr_head_len);
    o += w->incr_head_len;
    char num[8], *ne = num + sizeof num, *np = put_u64(ne, blen);
    memcpy(o, np, (size_t)(ne - np));
    o += ne - np;
    memcpy(o, "\r\n\r\n", 4);
    o += 4;
    memcpy(o, p, blen);
    return (size_t)(o - out) + blen;
}
