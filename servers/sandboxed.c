/* sandboxed multi-tenant server - the reactor design, plus tenant programs
 * run in a fresh sandbox for every request.
 *
 * Every DIR/<name>.lua (--tenants DIR) is served under /t/<name>/...: each
 * loop thread has a sandbox runner (servers/core/sandbox.h) and runs the
 * request inline, within the tenant's memory and time limits (503, 504). A
 * reloader thread picks up new, changed and removed files within 200 ms;
 * every other route (/, /ping, /metrics with per-tenant counters...) is
 * served natively, so the sandbox's cost shows on the same server.
 * Weakness: a tenant runs on the loop that owns the connection, so a slow
 * one (up to its time limit) delays that loop's other connections; one that
 * keeps timing out is held to about a quarter of the loop (the sandbox
 * answers it 503 without running), which bounds the harm but not to zero. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/reactor.h"
#include "core/sandbox.h"

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

/* /t/<name> and /t/<name>/... go to tenant <name>, with the rest as path. */
static int tenant_request(session_t *s, const http_request_t *r, const char *body, size_t blen,
                          void *ctx)
{
    (void)ctx;
    if (r->path_len < 4 || memcmp(r->path, "/t/", 3) != 0)
        return 0;
    const char *name = r->path + 3, *end = r->path + r->path_len;
    const char *slash = memchr(name, '/', (size_t)(end - name));
    sandbox_req_t q = {r->method, r->method_len, slash ? slash : "/",
                       slash ? (size_t)(end - slash) : 1, r->query, r->query_len,
                       r->headers, r->num_headers, body, blen};
    sandbox_resp_t a;
    if (sandbox_run(runner, name, (size_t)((slash ? slash : end) - name), &q, &a) < 0)
        return 0; /* no such tenant: the core's 404 */
    session_respond(s, a.status, a.content_type, a.body, a.body_len);
    return 1;
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    char err[256];
    server_init(argc, argv, "sandboxed", SERVER_OPT_THREADS | SERVER_OPT_WORKERS | SERVER_OPT_TENANTS,
                &cfg);
    sandbox_cfg_t sc = {cfg.tenants, cfg.tenant_mem_kb, cfg.tenant_ms, 0};
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
