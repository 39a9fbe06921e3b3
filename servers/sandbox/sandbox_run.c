/* sandbox_run: runners, and one request in a fresh sandbox.
 *
 * A runner (one per thread that serves requests) keeps one slot per tenant
 * it has served: an arena with the built state (sandbox_state.c), and the
 * snapshot of the arena's used bytes. The request path takes no lock: find
 * the slot by name (the runner's own hash table), compare the tenant's
 * generation with the slot's (one atomic load), take a state the loader
 * finished (another; sandbox_registry.c), restore the snapshot (copy back
 * the pages requests write, see sandbox_arena.c), reseed math.random's state
 * from getrandom() entropy, and call handle(req) under the time limit.
 *
 * Fair share: a tenant runs on the thread of the connection's loop, so the
 * loop's other connections wait while it runs. Each (runner, tenant) has a
 * bucket that every request fills with the CPU time it used in the sandbox
 * and that drains at the tenant's share of the clock; while it holds more
 * than SHARE_BURST_MS the tenant is answered 503 without running. A second
 * bucket takes the loop's time the tenant held (the clock, which others
 * wait for, whether the thread ran or the kernel gave the CPU to another
 * process), draining at twice the share: on a machine short of CPU, a
 * tenant within its CPU share still cannot hold the loop most of the time.
 *
 * The returned values are read with lua_type and raw conversions only, so no
 * metamethod of a returned value ever runs outside the limits.
 *
 * handle(req) runs on the runner's own stack (sandbox_limit.c): nested C
 * calls that reach its end are cut like a timeout, answered 503 "stack limit
 * exceeded". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "sandbox_int.h"

#define SHARE_BURST_MS 100 /* a tenant is held back once it has used this much in a burst */
#define SHARE_EXACT_US 50  /* after a request this long: charge the next one's CPU time */
#define HOLD_BURST_MS  200 /* ... or once it has held its loop this long (clock) in a burst */

static void bump(uint64_t *c, uint64_t by)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + by, __ATOMIC_RELAXED);
}

/* ---- runners ---- */

sandbox_runner_t *sandbox_runner_new(void)
{
    sandbox_runner_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->cap = 16;
    r->tab = calloc(r->cap, sizeof *r->tab);
    if (!r->tab) {
        free(r);
        return NULL;
    }
    if (sb_guard_register(&r->guard) < 0) {
        free(r->tab);
        free(r);
        return NULL;
    }
    return r;
}

void sandbox_runner_free(sandbox_runner_t *r)
{
    if (!r)
        return;
    if (sb_running == r)
        sb_running = NULL;
    sb_guard_unregister(&r->guard);
    for (size_t i = 0; i < r->cap; i++) {
        sb_slot_t *s = r->tab[i];
        if (!s)
            continue;
        sb_tenant_detach(s);
        sb_state_drop(s);
        free(s->counts);
        free(s);
    }
    free(r->tab);
    free(r);
}

static uint64_t name_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static sb_slot_t *slot_lookup(sandbox_runner_t *r, const char *name, size_t n)
{
    size_t i = name_hash(name, n) & (r->cap - 1);
    for (sb_slot_t *s; (s = r->tab[i]) != NULL; i = (i + 1) & (r->cap - 1))
        if (s->name_len == n && memcmp(s->name, name, n) == 0)
            return s;
    return NULL;
}

static int slot_insert(sandbox_runner_t *r, sb_slot_t *s)
{
    if (2 * (r->n + 1) > r->cap) {
        size_t cap = r->cap * 2;
        sb_slot_t **tab = calloc(cap, sizeof *tab);
        if (!tab)
            return -ENOMEM;
        for (size_t j = 0; j < r->cap; j++) {
            sb_slot_t *o = r->tab[j];
            if (!o)
                continue;
            size_t i = name_hash(o->name, o->name_len) & (cap - 1);
            while (tab[i])
                i = (i + 1) & (cap - 1);
            tab[i] = o;
        }
        free(r->tab);
        r->tab = tab;
        r->cap = cap;
    }
    size_t i = name_hash(s->name, s->name_len) & (r->cap - 1);
    while (r->tab[i])
        i = (i + 1) & (r->cap - 1);
    r->tab[i] = s;
    r->n++;
    return 0;
}

/* A slot for a tenant that exists in the registry (NULL otherwise). */
static sb_slot_t *slot_new(sandbox_runner_t *r, const char *name, size_t n)
{
    sb_tenant_t *t = sb_tenant_get(name, n);
    if (!t)
        return NULL;
    sb_slot_t *s = calloc(1, sizeof *s);
    sb_counts_t *c = calloc(1, sizeof *c);
    if (!s || !c)
        goto err;
    memcpy(s->name, name, n);
    s->name_len = n;
    if (slot_insert(r, s) < 0)
        goto err;
    s->t = t;
    s->gen = (uint64_t)-1; /* never built: refresh on first use */
    s->counts = c;
    c->slot = s;
    sb_tenant_attach(s);
    return s;
err:
    free(s);
    free(c);
    return NULL;
}

/* ---- one request ---- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A new state for math.random (xoshiro256**, four words) from 128 bits of
 * the runner's getrandom() buffer, as much entropy as math.randomseed
 * takes; the other two words are a bijective mix of them, so no request can
 * predict another's numbers. A refill (16 KiB, one syscall) serves 1024
 * requests: the kernel's generator costs about 25 ns per request. */
static void reseed(sandbox_runner_t *r, uint64_t *dst)
{
    if (r->rnd_left < 2) {
        size_t want = sizeof r->rnd, got = 0;
        while (got < want) {
            ssize_t n = getrandom((char *)r->rnd + got, want - got, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        if (got < want) { /* no getrandom: never here on Linux >= 3.17 */
            uint64_t x = (uint64_t)sb_now_ns();
            for (size_t i = 0; i < 2048; i++)
                r->rnd[i] ^= mix64(x += 0x9e3779b97f4a7c15ull);
        }
        r->rnd_left = 2048;
    }
    r->rnd_left -= 2;
    uint64_t e0 = r->rnd[r->rnd_left], e1 = r->rnd[r->rnd_left + 1];
    dst[0] = e0;
    dst[1] = e1;
    dst[2] = mix64(e0 ^ 0x6a09e667f3bcc908ull);
    dst[3] = mix64(e1 ^ 0xbb67ae8584caa73bull);
}

static int valid_ctype(const char *s, size_t n)
{
    if (n == 0 || n > 127)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return 0;
    return 1;
}

/* Read handle's three results (top of the stack) with raw calls only. */
static int take_answer(lua_State *L, sandbox_resp_t *resp)
{
    int t1 = lua_type(L, -3), t2 = lua_type(L, -2), t3 = lua_type(L, -1);
    size_t n;
    if (t1 == LUA_TSTRING && t2 == LUA_TNIL && t3 == LUA_TNIL) {
        resp->status = 200;
        resp->body = lua_tolstring(L, -3, &resp->body_len);
        return 0;
    }
    if (t1 != LUA_TNUMBER)
        return -1;
    int isint;
    lua_Integer st = lua_tointegerx(L, -3, &isint);
    if (!isint || st < 200 || st > 599 || st == 204 || st == 304)
        return -1; /* no body allowed with those, and 1xx is not an answer */
    resp->status = (int)st;
    if (t2 == LUA_TSTRING)
        resp->body = lua_tolstring(L, -2, &resp->body_len);
    else if (t2 != LUA_TNIL)
        return -1;
    if (t3 == LUA_TSTRING) {
        const char *ct = lua_tolstring(L, -1, &n);
        if (!valid_ctype(ct, n))
            return -1;
        resp->content_type = ct;
    } else if (t3 != LUA_TNIL) {
        return -1;
    }
    return 0;
}

static void fail(sandbox_runner_t *r, sandbox_resp_t *resp, int outcome, int status,
                 const char *text)
{
    resp->outcome = outcome;
    resp->status = status;
    resp->content_type = "text/plain";
    snprintf(r->err, sizeof r->err, "%s\n", text);
    resp->body = r->err;
    resp->body_len = strlen(r->err);
}

#define CUT_TIME  (-1) /* guarded_call: cut by the time limit's jump */
#define CUT_STACK (-2) /* ... by the jump off the stack's guard */

/* One guarded call of handle(req), on the runner's stack (a function of its
 * own so that nothing the jump could clobber lives in the caller). Returns
 * the pcall status, or CUT_TIME or CUT_STACK. */
static __attribute__((noinline)) int guarded_call(sandbox_runner_t *r, lua_State *L, int ms,
                                                  int64_t start)
{
    sb_guard_t *g = &r->guard;
    sb_pcall_args_t pa = {L, 3, 3, LUA_OK};
    sb_guard_arm(g, L, start, ms);
    switch (sigsetjmp(g->jb, 0)) {
    case 0:
        break;
    case SB_CUT_STACK:
        sb_guard_jumped(g);
        return CUT_STACK;
    default:
        sb_guard_jumped(g);
        return CUT_TIME;
    }
    sb_guard_enter(g);
    lua_pushlightuserdata(L, r);
    sb_guard_call(g, sb_run_pcall, &pa);
    sb_guard_leave(g);
    return pa.st;
}

int sandbox_run(sandbox_runner_t *r, const char *name, size_t name_len, const sandbox_req_t *req,
                sandbox_resp_t *resp)
{
    sb_slot_t *s = slot_lookup(r, name, name_len);
    if (!s && !(s = slot_new(r, name, name_len)))
        return -ENOENT;
    if (__atomic_load_n(&s->t->gen, __ATOMIC_ACQUIRE) != s->gen)
        sb_slot_refresh(s);
    if (__atomic_load_n(&s->job, __ATOMIC_RELAXED))
        sb_slot_poll(s);
    if (s->removed)
        return -ENOENT;
    if (!s->a && __atomic_load_n(&s->job, __ATOMIC_RELAXED))
        return -EAGAIN; /* its first state here is being built */
    resp->content_type = "text/plain";
    resp->body = "";
    resp->body_len = 0;
    resp->outcome = SB_OK;
    sb_counts_t *c = s->counts;
    bump(&c->requests, 1);
    if (!s->a) {
        fail(r, resp, SB_NOT_LOADED, 500, "tenant failed to load");
        bump(&c->outcomes[SB_NOT_LOADED], 1);
        return 0;
    }
    /* Containment. Tenants run on the thread that serves the connection, so
     * its other connections wait while one runs, whether it stays within
     * its time limit or not: a tenant taking half its limit on every
     * request, with a few clients, would own the loop. So every request's
     * CPU time in the sandbox (restore, reseed, call) goes into a bucket that
     * drains at the tenant's share of the clock (sandbox_registry.c's
     * SHARE_PCT by default); while the bucket is over SHARE_BURST_MS the
     * tenant is answered 503 without running. A busy tenant thus runs at
     * most one request at a time once past its burst, and uses about its
     * share of the CPU in the long run (plus one request); the others wait
     * for at most one of its requests. And its time on the clock goes into
     * the hold bucket, which drains at twice the share: when other processes
     * take the CPU, a request's CPU time is a fraction of the time it holds
     * the loop, and within its CPU share a tenant could hold the loop all
     * the time (hello beside a burner: p99 430 ms on a loaded machine). A
     * hello (0.5 us in the sandbox against some 10 us of the loop's own work
     * per request) is nowhere near either. */
    int64_t now = sb_ticks();
    int pct = s->ver->lim.share_pct, hold_pct = pct < 50 ? 2 * pct : 100;
    int64_t drained = (now - s->share_at) / 100 * pct;
    int64_t hold_drained = (now - s->share_at) / 100 * hold_pct;
    s->share = s->share > drained ? s->share - drained : 0;
    s->hold = s->hold > hold_drained ? s->hold - hold_drained : 0;
    s->share_at = now;
    if ((pct < 100 && s->share > (int64_t)SHARE_BURST_MS * sb_ticks_per_ms) ||
        (hold_pct < 100 && s->hold > (int64_t)HOLD_BURST_MS * sb_ticks_per_ms)) {
        fail(r, resp, SB_THROTTLED, 503, "tenant over its share of the CPU");
        bump(&c->outcomes[SB_THROTTLED], 1);
        return 0;
    }
    /* The charge is the CPU time used. Reading the thread's CPU clock is a
     * system call (0.5 us, more than a hello's whole run), so it is read
     * only when it matters: after a request of SHARE_EXACT_US or more (1 us
     * of two reads is then 2% at most), and while the bucket is half full.
     * Other requests are charged their wall time, never less than their CPU
     * time: a tenant is never undercharged, and a fast one that the kernel
     * preempted mid-run (a loaded machine) is overcharged only until its
     * bucket is half full, never held back for time it did not use. */
    int exact = s->share_exact || s->share > (int64_t)SHARE_BURST_MS * sb_ticks_per_ms / 2;
    int64_t cpu0 = exact ? sb_thread_cpu_ticks() : 0;
    sb_snap_restore(s->a, &s->snap);
    bump(&c->restored, s->snap.copied);
    if (s->rand)
        reseed(r, s->rand);

    lua_State *L = s->L;
    int ms = s->ver->lim.ms;
    r->req = req;
    sb_running = r;
    int64_t t0 = sb_ticks();
    int st = guarded_call(r, L, ms, t0);
    int64_t end = sb_ticks(), took = end - t0;
    r->req = NULL;
    bump(&c->ticks, (uint64_t)(end - now)); /* the restore and the reseed count too */
    int64_t charge = end - now;
    if (exact) {
        int64_t cpu = sb_thread_cpu_ticks() - cpu0;
        if (cpu < charge)
            charge = cpu;
    }
    s->share += charge;
    s->hold += end - now;
    s->share_exact = end - now >= (int64_t)SHARE_EXACT_US * sb_ticks_per_ms / 1000;

    if (st == CUT_STACK) { /* first: a refusal the jump left pending is no matter */
        fail(r, resp, SB_STACK, 503, "stack limit exceeded");
        bump(&c->limit_stack, 1);
    } else if (sb_arena_settle(s->a) || st == LUA_ERRMEM) {
        fail(r, resp, SB_MEMORY, 503, "memory limit exceeded");
        bump(&c->limit_memory, 1);
    } else if (st == CUT_TIME || r->guard.hit || took > (int64_t)ms * sb_ticks_per_ms) {
        fail(r, resp, SB_TIMEOUT, 504, "time limit exceeded");
        bump(&c->limit_time, 1);
    } else if (st != LUA_OK) {
        char why[SB_ERR_MAX - 16];
        sb_describe(L, why, sizeof why);
        resp->outcome = SB_LUA_ERROR;
        resp->status = 500;
        snprintf(r->err, sizeof r->err, "lua error: %s\n", why);
        resp->body = r->err;
        resp->body_len = strlen(r->err);
    } else if (take_answer(L, resp) < 0) {
        fail(r, resp, SB_BAD_RETURN, 500, "bad return from handle(): want status, body[, type]");
    }
    bump(&c->outcomes[resp->outcome], 1);
    return 0;
}

int sandbox_wait(sandbox_runner_t *r, const char *name, size_t name_len, sandbox_waiter_t *w)
{
    sb_slot_t *s = slot_lookup(r, name, name_len);
    return s ? sb_slot_wait(s, w) : -EALREADY;
}

void sandbox_runner_trim(sandbox_runner_t *r)
{
    for (size_t i = 0; i < r->cap; i++) {
        sb_slot_t *s = r->tab[i];
        if (!s || !s->a || sb_arena_used(s->a) <= s->snap.len + (256 << 10))
            continue;
        sb_snap_restore(s->a, &s->snap);
        sb_arena_trim(s->a, s->snap.len);
    }
}
