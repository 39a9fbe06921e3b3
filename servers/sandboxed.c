/* sandboxed multi-tenant server - the reactor design, plus tenant programs
 * run in a fresh sandbox for every request.
 *
 * Every DIR/<name>.lua (--tenants DIR) is served under /t/<name>/...: each
 * loop thread has a sandbox runner (servers/sandbox/sandbox.h) and runs the
 * request inline, within the tenant's memory and time limits (503, 504). A
 * reloader thread picks up new, changed and removed files within 200 ms;
 * every other route (/, /ping, /metrics with per-tenant counters...) is
 * served natively, so the sandbox's cost shows on the same server. No
 * tenant's top-level code runs on a loop: the reloader and the sandbox's
 * loader thread build each version, and a request for a tenant this loop
 * has no version of yet is deferred until it is built.
 * Weakness: a tenant runs on the loop that owns the connection, so a slow
 * one (up to its time limit) delays that loop's other connections; one that
 * keeps the loop busy is held to about a quarter of it (its time in the
 * sandbox counts, and past a 100 ms burst it is answered 503 without
 * running), which bounds the harm but not to zero. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/reactor.h"
#include "sandbox/sandbox.h"

static __thread sandbox_runner_t *runner;

static int thread_init(int index, void *ctx)
{
    (void)index, (void)ctx;
    runner = sandbox_runner_new();
    return runner ? 0 : -ENOMEM;
}

static void tick(int index, void *ctx)
{
    (void)index, (void)ctx;
    sandbox_runner_trim(runner);
}

/* A request deferred until its tenant's first version on this loop is
 * built: a copy of it (the session's buffer moves on), in one allocation. */
typedef struct pending {
    sandbox_waiter_t w;
    session_t *s;
    const char *name;
    size_t name_len;
    sandbox_req_t q;
    sandbox_header_t *headers;
    char *next; /* where the next copied bytes go */
} pending_t;

static const char *copy_in(pending_t *p, const char *src, size_t n)
{
    char *dst = p->next;
    if (n)
        memcpy(dst, src, n);
    p->next += n;
    return dst;
}

static pending_t *pending_new(session_t *s, const char *name, size_t name_len,
                              const sandbox_req_t *q)
{
    size_t bytes = name_len + q->method_len + q->path_len + q->query_len + q->body_len;
    for (size_t i = 0; i < q->num_headers; i++)
        bytes += q->headers[i].name_len + q->headers[i].value_len;
    size_t hdrs = q->num_headers * sizeof(sandbox_header_t);
    pending_t *p = malloc(sizeof *p + hdrs + bytes);
    if (!p)
        return NULL;
    p->s = s;
    p->headers = (sandbox_header_t *)(p + 1);
    p->next = (char *)p->headers + hdrs;
    p->name = copy_in(p, name, name_len);
    p->name_len = name_len;
    p->q = *q;
    p->q.method = copy_in(p, q->method, q->method_len);
    p->q.path = copy_in(p, q->path, q->path_len);
    p->q.query = q->query ? copy_in(p, q->query, q->query_len) : NULL;
    p->q.body = q->body ? copy_in(p, q->body, q->body_len) : NULL;
    for (size_t i = 0; i < q->num_headers; i++) {
        const sandbox_header_t *h = &q->headers[i];
        p->headers[i].name = copy_in(p, h->name, h->name_len);
        p->headers[i].name_len = h->name_len;
        p->headers[i].value = copy_in(p, h->value, h->value_len);
        p->headers[i].value_len = h->value_len;
    }
    p->q.headers = p->headers;
    return p;
}

static int retry(session_t *s, void *arg);

/* The build ended (on the loader's thread, or this loop's): run the request
 * again on its loop. */
static void built(sandbox_waiter_t *w)
{
    pending_t *p = (pending_t *)((char *)w - offsetof(pending_t, w));
    while (reactor_post(p->s, retry, p) < 0)
        usleep(1000); /* out of memory: the answer must still get back */
}

/* Wait for the build, or go round again at once when it is over already. */
static void wait_built(pending_t *p)
{
    if (sandbox_wait(runner, p->name, p->name_len, &p->w) < 0)
        built(&p->w);
}

/* On the loop again: the tenant's state is built (or failed, or a newer
 * version is being built: then wait again). */
static int retry(session_t *s, void *arg)
{
    pending_t *p = arg;
    sandbox_resp_t a;
    int rc = sandbox_run(runner, p->name, p->name_len, &p->q, &a);
    if (rc == -EAGAIN) {
        wait_built(p);
        return session_wants(s);
    }
    free(p);
    if (rc < 0) /* removed meanwhile */
        return session_resume(s, 404, NULL, "not found\n", 10);
    return session_resume(s, a.status, a.content_type, a.body, a.body_len);
}

/* /t/<name> and /t/<name>/... go to tenant <name>, with the rest as path. */
static int tenant_request(session_t *s, const http_request_t *r, const char *body, size_t blen,
                          void *ctx)
{
    (void)ctx;
    if (r->path_len < 4 || memcmp(r->path, "/t/", 3) != 0)
        return 0;
    const char *name = r->path + 3, *end = r->path + r->path_len;
    const char *slash = memchr(name, '/', (size_t)(end - name));
    size_t name_len = (size_t)((slash ? slash : end) - name);
    sandbox_req_t q = {
        r->method, r->method_len, slash ? slash : "/", slash ? (size_t)(end - slash) : 1,
        r->query,  r->query_len,  r->headers,          r->num_headers,
        body,      blen};
    sandbox_resp_t a;
    int rc = sandbox_run(runner, name, name_len, &q, &a);
    if (rc == -EAGAIN) {
        /* Its first version on this loop is being built elsewhere: answer
         * when it is (the loop goes on serving the others meanwhile). */
        pending_t *p = pending_new(s, name, name_len, &q);
        if (!p) {
            session_respond(s, 503, NULL, "tenant loading\n", 15);
            return 1;
        }
        p->w.ready = built;
        session_defer(s);
        wait_built(p);
        return 1;
    }
    if (rc < 0)
        return 0; /* no such tenant: the core's 404 */
    session_respond(s, a.status, a.content_type, a.body, a.body_len);
    return 1;
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    char err[256];
    server_init(argc, argv, "sandboxed",
                SERVER_OPT_THREADS | SERVER_OPT_WORKERS | SERVER_OPT_TENANTS, &cfg);
    sandbox_cfg_t sc = {cfg.tenants, cfg.tenant_mem_kb, cfg.tenant_ms, 0, 0};
    if (sandbox_init(&sc, err, sizeof err) < 0) {
        fprintf(stderr, "server-sandboxed: %s\n", err);
        return 1;
    }
    if (cfg.tenants && sandbox_start_reloader(200) < 0) {
        fprintf(stderr, "server-sandboxed: cannot start the reloader thread\n");
        return 1;
    }
    cfg.session.ext = tenant_request;
    reactor_hooks_t hooks = {thread_init, tick, 1000, NULL};
    return reactor_run(&cfg, &hooks);
}
