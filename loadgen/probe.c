#include "probe.h"

#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/net.h"
#include "core/timer.h"

static size_t collect(char *p, size_t size, size_t n, void *userdata)
{
    buf_t *b = userdata;
    if (buf_used(b) + size * n > (16u << 20))
        return 0; /* a metrics page is not this large */
    return buf_append(b, p, size * n) < 0 ? 0 : size * n;
}

static size_t discard(char *p, size_t size, size_t n, void *userdata)
{
    (void)p;
    (void)userdata;
    return size * n;
}

/* One HTTP request with libcurl; the body goes to b when given. */
static int curl_get(const char *url, int64_t timeout_ms, buf_t *b, char *err, size_t errlen)
{
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(err, errlen, "libcurl initialisation failed");
        return -ENOMEM;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, b ? collect : discard);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "%s: %s", url, curl_easy_strerror(rc));
        return -ECONNREFUSED;
    }
    if (b && (status < 200 || status > 299)) {
        snprintf(err, errlen, "%s: HTTP status %ld", url, status);
        return -EPROTO;
    }
    return 0;
}

/* A TCP connect bounded by timeout_ms. */
static int tcp_probe(const struct sockaddr_storage *addr, socklen_t addrlen, int64_t timeout_ms,
                     char *err, size_t errlen)
{
    int fd = net_connect((const struct sockaddr *)addr, addrlen, NULL, 0, NET_NONBLOCK);
    int rc = fd;
    if (fd >= 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n = poll(&p, 1, (int)timeout_ms);
        rc = n == 0 ? -ETIMEDOUT : n < 0 ? -errno : net_connect_result(fd);
        close(fd);
    }
    if (rc < 0)
        snprintf(err, errlen, "connect: %s", strerror(-rc));
    return rc < 0 ? rc : 0;
}

int probe_ready(const lg_opts_t *o, const struct sockaddr_storage *addr, socklen_t addrlen,
                int64_t wait_ms, int64_t timeout_ms, char *err, size_t errlen)
{
    int64_t until = time_update() + wait_ms;
    char url[2400];
    int rc;
    if (o->proto == LG_HTTP)
        snprintf(url, sizeof url, "http://%s%s%s:%d%s", strchr(o->host, ':') ? "[" : "", o->host,
                 strchr(o->host, ':') ? "]" : "", o->port, o->paths[0]);
    for (;;) {
        /* A connect first: cheap, and the error text names the real cause. */
        rc = tcp_probe(addr, addrlen, timeout_ms, err, errlen);
        /* Readiness (--wait-ready) for HTTP is an answered request; at the
         * start of a plain run a connect is enough: a server that accepts
         * and then hangs is to be measured, not refused. */
        if (rc == 0 && wait_ms > 0 && o->proto == LG_HTTP && !o->increment_keys)
            rc = curl_get(url, timeout_ms, NULL, err, errlen);
        if (rc == 0 || time_update() >= until)
            return rc;
        usleep(50000);
    }
}

int probe_parse_metrics(const char *text, probe_metrics_t *m)
{
    const char *p = text;
    while (*p) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > 0 && p[0] != '#') {
            /* "name{labels} value [timestamp]": the value follows the last
             * space outside the braces. */
            const char *brace = memchr(p, '}', len);
            const char *sp =
                memchr(brace ? brace : p, ' ', len - (size_t)((brace ? brace : p) - p));
            if (sp) {
                char *end;
                double v = strtod(sp + 1, &end);
                if (end != sp + 1) {
                    if (m->n == m->cap) {
                        size_t cap = m->cap ? m->cap * 2 : 64;
                        char **nn = realloc(m->names, cap * sizeof *nn);
                        if (!nn)
                            return -ENOMEM;
                        m->names = nn;
                        double *vv = realloc(m->values, cap * sizeof *vv);
                        if (!vv)
                            return -ENOMEM;
                        m->values = vv;
                        m->cap = cap;
                    }
                    m->names[m->n] = strndup(p, (size_t)(sp - p));
                    if (!m->names[m->n])
                        return -ENOMEM;
                    m->values[m->n++] = v;
                }
            }
        }
        p += len + (e ? 1 : 0);
    }
    return 0;
}

int probe_scrape(const char *url, int64_t timeout_ms, probe_metrics_t *m, char *err, size_t errlen)
{
    buf_t b = {0};
    memset(m, 0, sizeof *m);
    int rc = curl_get(url, timeout_ms, &b, err, errlen);
    if (rc == 0 && buf_append(&b, "", 1) == 0)
        rc = probe_parse_metrics(buf_head(&b), m);
    buf_free(&b);
    return rc;
}

double probe_metric(const probe_metrics_t *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->names[i], name) == 0)
            return m->values[i];
    return NAN;
}

void probe_metrics_free(probe_metrics_t *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->names[i]);
    free(m->names);
    free(m->values);
    memset(m, 0, sizeof *m);
}
