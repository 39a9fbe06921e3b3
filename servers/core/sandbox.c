/* sandbox: tenants, runners, and one request in a fresh sandbox.
 *
 * Registry: every tenant ever seen has a record (never freed before
 * sandbox_shutdown) holding its current version (source and limits,
 * reference-counted) and a generation number that changes whenever the
 * version does. Publishing validates the new version first: it is built once
 * on the publisher's thread (the reloader's), with the limits; a failure
 * leaves the old one.
 *
 * Loading: a state holds absolute pointers into its arena, and each runner's
 * arenas are mappings of its own, so a state can't be copied from one runner
 * to another: each runner needs the version's top-level code run for it
 * once. A runner's thread serves requests, so that never happens there. The
 * publisher hands its own state to one runner that serves the tenant, and
 * has the loader thread build one for each of the others, at once: the
 * loader builds states one at a time (a single thread: the loading of every
 * tenant together takes at most one core from the loops). A runner takes
 * its new state between two requests, and keeps serving the version it has
 * until then. A runner that serves the tenant for the first time takes the
 * publisher's state if nobody did (the spare), or asks the loader: until
 * its state is built it answers -EAGAIN, and its caller waits (sandbox_wait:
 * the server defers the request and runs it when built).
 *
 * Runners: a runner keeps one slot per tenant it has served: an arena with
 * the built state, and the snapshot of the arena's used bytes. The request
 * path takes no lock: find the slot by name (the runner's own hash table),
 * compare the tenant's generation with the slot's (one atomic load), take a
 * state the loader finished (another), restore the snapshot (copy back the
 * pages requests write, see sandbox_arena.c), reseed math.random's state
 * from getrandom() entropy, and call handle(req) under the time limit. The
 * snapshot's Lua stack holds [entry, handle, req] already, so a request
 * pushes a single value before lua_pcall. req is an empty table whose
 * fields are made on first read (__index, and __pairs fills them all, from
 * the request of the runner running on the calling thread): a tenant that
 * ignores req pays nothing for it.
 *
 * Fair share: a tenant runs on the thread of the connection's loop, so the
 * loop's other connections wait while it runs. Each (runner, tenant) has a
 * bucket that every request fills with its time in the sandbox and that
 * drains at the tenant's share of the clock; while it holds more than
 * SHARE_BURST_MS the tenant is answered 503 without running.
 *
 * The returned values are read with lua_type and raw conversions only, so no
 * metamethod of a returned value ever runs outside the limits.
 *
 * Every call into a tenant's state (its top-level code, handle(req)) runs
 * on the runner's own stack (sandbox_limit.c): nested C calls that reach
 * its end are cut like a timeout, answered 503 "stack limit exceeded".
 *
 * SANDBOX_DEBUG=1 in the environment prints the size of every snapshot built
 * (hello: 18.6 KB in 5 pages, of which requests write 2: 8 KB copied back
 * per request, sandbox_restored_bytes_total in /metrics). */
#include "sandbox.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "metrics.h"
#include "sandbox_int.h"

#define SHARE_PCT      25  /* of a runner's time, at most, for one tenant by default */
#define SHARE_BURST_MS 100 /* ... once it has used this much in a burst */
#define SRC_MAX     (1 << 20) /* largest tenant source */
#define ARENA_SLACK (1 << 20) /* arena = 3 x budget + this: room for free lists' waste */
#define LOAD_MS_MIN 1000      /* a version's top-level gets at least this long */
#define CALL_DEPTH  6         /* call frames made before the libraries */
#define ERR_MAX     256

/* ---- registry ---- */

typedef struct version {
    int refs; /* atomic */
    char *src;
    size_t len;
    sandbox_limits_t lim;
} version_t;

/* Counters of one (runner, tenant): one writer, read by sandbox_stats. */
typedef struct counts {
    uint64_t requests, outcomes[SB_OUTCOMES], limit_memory, limit_time, limit_stack, ticks,
        restored;
    struct counts *next;
    struct slot *slot; /* whose: so that a publisher finds the runners serving the tenant */
} counts_t;

struct slot;

typedef struct tenant {
    char name[SANDBOX_NAME_MAX + 1];
    pthread_mutex_t lock; /* guards cur, spare, counts, its slots' job, the totals below */
    version_t *cur;       /* NULL: not served */
    struct slot *spare;   /* cur built by its publisher, for the first new runner to want it */
    uint64_t gen;         /* atomic: changes with cur */
    counts_t *counts;     /* one per runner that has a slot */
    counts_t retired;     /* of runners freed since */
    uint64_t reloads, reload_errors, load_limit_memory, load_limit_time, load_limit_stack;
    int from_dir, seen;   /* for sandbox_scan */
    struct stat lua_st, conf_st;
    int has_conf;
    struct tenant *next;
} tenant_t;

static struct {
    pthread_mutex_t lock; /* guards the list and scanning */
    tenant_t *list;
    uint64_t gen;         /* atomic: last generation handed out */
    sandbox_cfg_t cfg;
    int ready;
    pthread_t reloader;
    int reloading, stop, interval_ms;
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- runners ---- */

typedef struct slot {
    char name[SANDBOX_NAME_MAX + 1];
    size_t name_len;
    tenant_t *t;
    uint64_t gen;       /* of the version built (or found missing) */
    version_t *ver;     /* the version the snapshot was built from */
    sb_arena_t *a;      /* NULL: nothing built */
    sb_snap_t snap;
    lua_State *L;
    uint64_t *rand;     /* math.random's state, inside the arena */
    int removed;        /* the tenant is not served */
    int64_t share;      /* fair-share bucket: run time not yet drained (ticks) */
    int64_t share_at;   /* when it was last drained */
    counts_t *counts;
    struct job *job;    /* atomic, written under the tenant's lock: a state of a newer
                           version, built or being built for this slot */
} slot_t;

/* A state the loader builds for one runner's slot. Owned by the slot and,
 * while queued or being built, by the loader: the last to let go frees it. */
typedef struct job {
    int refs;              /* atomic */
    pthread_mutex_t lock;  /* guards waiters, and done against them */
    int done;              /* atomic: ended (ok says how) */
    int cancelled;         /* atomic: the slot wants it no more */
    int ok;                /* built holds the state (written before done) */
    uint64_t gen;          /* the tenant's generation it is for */
    tenant_t *t;
    version_t *v;          /* the version to build (ours until built holds it) */
    slot_t built;          /* the result: a, snap, L, rand, ver */
    sandbox_waiter_t *waiters;
    struct job *next;      /* the loader's queue */
    struct job *stale;     /* a publisher's list of jobs to cancel */
} job_t;

/* The loader thread and its queue of jobs, first come first built. */
static struct {
    pthread_mutex_t lock; /* guards the queue, running, stop */
    pthread_cond_t more;
    job_t *head, *tail;
    pthread_t thread;
    int running, stop;
} ld = {.lock = PTHREAD_MUTEX_INITIALIZER, .more = PTHREAD_COND_INITIALIZER};

struct sandbox_runner {
    sb_guard_t guard;
    slot_t **tab; /* open addressing, power-of-two size */
    size_t cap, n;
    const sandbox_req_t *req;
    uint64_t rnd[2048]; /* entropy from getrandom, 16 bytes per request */
    size_t rnd_left;
    char err[ERR_MAX];
    char lower[512];   /* a lower-cased header name */
};

/* The runner running a request on this thread: where req's fields come
 * from. (Not bound into the state: a state is built on another thread.) */
static __thread sandbox_runner_t *running;

/* Build context: what the protected setup function needs and finds. */
typedef struct build {
    const version_t *ver;
    const char *name;
    uint64_t *rand;
} build_t;

static void bump(uint64_t *c, uint64_t by)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + by, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *c) { return __atomic_load_n(c, __ATOMIC_RELAXED); }

static int valid_name(const char *s, size_t n)
{
    if (n == 0 || n > SANDBOX_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

static void version_release(version_t *v)
{
    if (v && __atomic_sub_fetch(&v->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(v->src);
        free(v);
    }
}

/* The tenant record for a name (reg.lock held), created when `create`. */
static tenant_t *tenant_find(const char *name, size_t n, int create)
{
    for (tenant_t *t = reg.list; t; t = t->next)
        if (strlen(t->name) == n && memcmp(t->name, name, n) == 0)
            return t;
    if (!create)
        return NULL;
    tenant_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    memcpy(t->name, name, n);
    pthread_mutex_init(&t->lock, NULL);
    t->next = reg.list;
    reg.list = t;
    return t;
}

/* ---- building a state ---- */

static int safe_load(lua_State *L)
{
    /* load(chunk [, chunkname [, mode [, env]]]) with mode forced to text:
     * no binary chunk, whatever the caller asks. */
    if (lua_gettop(L) < 3)
        lua_settop(L, 3);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static const char rand_key = 0; /* registry key anchoring math.random's state */

/* req's fields, made on first read from the request being run. */
static int req_field(lua_State *L, const sandbox_req_t *q, const char *k)
{
    if (strcmp(k, "method") == 0) {
        lua_pushlstring(L, q->method, q->method_len);
    } else if (strcmp(k, "path") == 0) {
        lua_pushlstring(L, q->path, q->path_len);
    } else if (strcmp(k, "query") == 0) {
        lua_pushlstring(L, q->query ? q->query : "", q->query ? q->query_len : 0);
    } else if (strcmp(k, "body") == 0) {
        lua_pushlstring(L, q->body ? q->body : "", q->body ? q->body_len : 0);
    } else if (strcmp(k, "headers") == 0) {
        sandbox_runner_t *r = running;
        lua_createtable(L, 0, (int)q->num_headers);
        for (size_t i = 0; i < q->num_headers; i++) {
            const sandbox_header_t *h = &q->headers[i];
            size_t n = h->name_len < sizeof r->lower ? h->name_len : sizeof r->lower;
            for (size_t j = 0; j < n; j++)
                r->lower[j] = (char)tolower((unsigned char)h->name[j]);
            lua_pushlstring(L, r->lower, n);
            lua_pushvalue(L, -1);
            if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated: join, as HTTP allows */
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, h->value, h->value_len);
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, h->value, h->value_len);
            }
            lua_rawset(L, -3);
        }
    } else {
        return 0;
    }
    lua_pushstring(L, k);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1); /* made once: from now on an ordinary field */
    return 1;
}

static int req_index(lua_State *L)
{
    sandbox_runner_t *r = running;
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!r || !r->req || lua_type(L, 2) != LUA_TSTRING)
        return 0;
    return req_field(L, r->req, lua_tostring(L, 2));
}

static int req_pairs(lua_State *L)
{
    static const char *const keys[] = {"method", "path", "query", "body", "headers", NULL};
    sandbox_runner_t *r = running;
    luaL_checktype(L, 1, LUA_TTABLE);
    for (const char *const *k = keys; *k && r && r->req; k++) {
        lua_pushstring(L, *k);
        if (lua_rawget(L, 1) == LUA_TNIL && req_field(L, r->req, *k))
            lua_pop(L, 1);
        lua_pop(L, 1);
    }
    lua_getglobal(L, "next");
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Calls itself n levels deep: the call frames it leaves allocated. */
static int nest(lua_State *L)
{
    lua_Integer n = lua_tointeger(L, 1);
    if (n > 0) {
        lua_pushcfunction(L, nest);
        lua_pushinteger(L, n - 1);
        lua_call(L, 1, 0);
    }
    return 0;
}

/* ---- coroutines ----
 *
 * coroutine.resume, wrap and close, done again so that the time limit knows
 * which Lua thread runs (a hook is per thread: its first stage must hook the
 * one running, see sb_guard_running). Otherwise they behave as the
 * library's. */

#if LUA_VERSION_RELEASE_NUM >= 50406
#define close_thread(co, from) lua_closethread(co, from)
#else
#define close_thread(co, from) ((void)(from), lua_resetthread(co))
#endif

/* Resume co from L with the n values on top of L. Returns the number of
 * values it yielded or returned, moved onto L, or -1 with the error on top
 * of L. */
static int co_run(lua_State *L, lua_State *co, int n)
{
    int nres;
    if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) {
        lua_pushliteral(L, "cannot resume dead coroutine");
        return -1;
    }
    if (!lua_checkstack(co, n)) {
        lua_pushliteral(L, "too many arguments to resume");
        return -1;
    }
    lua_xmove(L, co, n);
    sb_guard_running(co);
    int st = lua_resume(co, L, n, &nres);
    sb_guard_running(L);
    if (st != LUA_OK && st != LUA_YIELD) {
        lua_xmove(co, L, 1);
        return -1;
    }
    if (!lua_checkstack(L, nres + 1)) {
        lua_pop(co, nres);
        lua_pushliteral(L, "too many results to resume");
        return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
}

static int co_resume(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    lua_State *co = lua_tothread(L, 1);
    int n = co_run(L, co, lua_gettop(L) - 1);
    lua_pushboolean(L, n >= 0);
    lua_insert(L, n >= 0 ? -(n + 1) : -2);
    return n >= 0 ? n + 1 : 2;
}

/* The function coroutine.wrap returns: co is its upvalue. */
static int co_call(lua_State *L)
{
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int n = co_run(L, co, lua_gettop(L));
    if (n >= 0)
        return n;
    int st = lua_status(co);
    if (st != LUA_OK && st != LUA_YIELD) { /* it died: close its variables */
        sb_guard_running(co);
        st = close_thread(co, L);
        sb_guard_running(L);
        lua_pop(L, 1);
        lua_xmove(co, L, 1); /* the error, or a __close handler's */
    }
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) { /* where it was called from */
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int co_wrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushcclosure(L, co_call, 1);
    return 1;
}

static int co_close(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    lua_State *co = lua_tothread(L, 1);
    lua_Debug ar;
    /* Suspended or dead only: not L itself, nor one that resumed another. */
    if (co == L || (lua_status(co) == LUA_OK && lua_getstack(co, 0, &ar)))
        return luaL_error(L, "cannot close a %s coroutine", co == L ? "running" : "normal");
    sb_guard_running(co); /* its __close handlers run on it */
    int st = close_thread(co, L);
    sb_guard_running(L);
    if (st == LUA_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_xmove(co, L, 1);
    return 2;
}

static const luaL_Reg co_funcs[] = {
    {"resume", co_resume}, {"wrap", co_wrap}, {"close", co_close}, {NULL, NULL}};

/* Protected: the safe libraries, then the tenant's chunk. Leaves handle. */
static int setup(lua_State *L)
{
    build_t *b = lua_touserdata(L, 1);
    /* The call frames of a request's first levels, made first: they are
     * written by every request, and made here they sit next to the Lua
     * stack, so a restore copies back 2 pages instead of 3 (a hello; the
     * collection at the end frees every other spare frame, and what is
     * left still covers a request's first levels). */
    lua_pushcfunction(L, nest);
    lua_pushinteger(L, CALL_DEPTH);
    lua_call(L, 1, 0);
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_COLIBNAME, luaopen_coroutine},
        {NULL, NULL}};
    for (const luaL_Reg *l = libs; l->name; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    lua_getglobal(L, LUA_COLIBNAME);
    luaL_setfuncs(L, co_funcs, 0);
    lua_pop(L, 1);
    /* Base functions that reach files, the collector or stdout. */
    static const char *const drop[] = {"dofile", "loadfile", "collectgarbage", "print", NULL};
    for (const char *const *d = drop; *d; d++) {
        lua_pushnil(L);
        lua_setglobal(L, *d);
    }
    lua_getglobal(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump"); /* bytecode out means bytecode in elsewhere */
    lua_pop(L, 1);
    lua_getglobal(L, "load");
    lua_pushcclosure(L, safe_load, 1);
    lua_setglobal(L, "load");

    /* math.random's state is the userdata upvalue of math.random (Lua 5.4:
     * four 64-bit words). Anchor it in the registry, so it stays where it
     * is whatever the chunk does with math.random: it is overwritten with
     * fresh entropy before every request. */
    lua_getglobal(L, LUA_MATHLIBNAME);
    lua_getfield(L, -1, "random");
    if (lua_getupvalue(L, -1, 1) && lua_type(L, -1) == LUA_TUSERDATA && lua_rawlen(L, -1) == 32) {
        b->rand = lua_touserdata(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &rand_key);
    } else {
        lua_pop(L, 1);
    }
    lua_pop(L, 2);

    char chunkname[SANDBOX_NAME_MAX + 8];
    snprintf(chunkname, sizeof chunkname, "@%s.lua", b->name);
    if (luaL_loadbufferx(L, b->ver->src, b->ver->len, chunkname, "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 0);
    if (lua_getglobal(L, "handle") != LUA_TFUNCTION)
        return luaL_error(L, "%s.lua defines no function handle(req)", b->name);
    lua_newtable(L); /* req */
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, req_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, req_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_setmetatable(L, -2);
    /* Collect the compiler's garbage (and run the chunk's finalizers) here,
     * under the limits, so the snapshot holds only what lives. */
    lua_gc(L, LUA_GCCOLLECT);
    return 2;
}

static int entry(lua_State *L);

/* A lua_pcall, for sb_guard_call (on the runner's stack). */
typedef struct pcall_args {
    lua_State *L;
    int nargs, nres, st;
} pcall_args_t;

static void run_pcall(void *p)
{
    pcall_args_t *a = p;
    a->st = lua_pcall(a->L, a->nargs, a->nres, 0);
}

/* Describe a failed call's error object without running anything. */
static void describe(lua_State *L, char *out, size_t cap)
{
    if (lua_type(L, -1) == LUA_TSTRING)
        snprintf(out, cap, "%s", lua_tostring(L, -1));
    else
        snprintf(out, cap, "error object is a %s", lua_typename(L, lua_type(L, -1)));
}

/* Build version v of a tenant in a new arena, under its limits (the time
 * limit at least LOAD_MS_MIN). On success fills the slot's arena, snapshot,
 * L and rand; returns 0. Otherwise returns -1 with the reason in r->err,
 * and *limit says which limit was hit (0 none, 1 memory, 2 time, 3 stack). */
static int build(sandbox_runner_t *r, const char *name, const version_t *v, slot_t *out,
                 int *limit)
{
    size_t budget = (size_t)v->lim.mem_kb << 10;
    int ms = v->lim.ms < LOAD_MS_MIN ? LOAD_MS_MIN : v->lim.ms;
    sb_guard_t *g = &r->guard;
    build_t b = {v, name, NULL};
    volatile int rc = -1;
    *limit = 0;
    sb_arena_t *a = sb_arena_new(3 * budget + ARENA_SLACK, budget);
    if (!a) {
        snprintf(r->err, sizeof r->err, "out of memory (arena)");
        return -1;
    }
    lua_State *L = lua_newstate(sb_arena_alloc, a);
    if (!L) {
        snprintf(r->err, sizeof r->err, "memory limit exceeded");
        *limit = 1;
        goto err;
    }
    sb_guard_arm(g, L, sb_ticks(), ms);
    switch (sigsetjmp(g->jb, 0)) {
    case 0: {
        pcall_args_t pa = {L, 1, 2, LUA_OK};
        sb_guard_enter(g);
        lua_pushcfunction(L, setup);
        lua_pushlightuserdata(L, &b);
        sb_guard_call(g, run_pcall, &pa);
        sb_guard_leave(g);
        int st = pa.st;
        if (sb_arena_settle(a) || st == LUA_ERRMEM) {
            snprintf(r->err, sizeof r->err, "memory limit exceeded (top-level)");
            *limit = 1;
        } else if (g->hit) {
            snprintf(r->err, sizeof r->err, "time limit exceeded (top-level)");
            *limit = 2;
        } else if (st != LUA_OK) {
            describe(L, r->err, sizeof r->err);
        } else {
            rc = 0;
        }
        break;
    }
    case SB_CUT_STACK:
        sb_guard_jumped(g);
        snprintf(r->err, sizeof r->err, "stack limit exceeded (top-level)");
        *limit = 3;
        break;
    default:
        sb_guard_jumped(g);
        snprintf(r->err, sizeof r->err, "time limit exceeded (top-level)");
        *limit = 2;
    }
    if (rc < 0)
        goto err;
    /* The stack every request starts from: [entry, handle, req]. */
    lua_settop(L, 2);
    lua_pushcfunction(L, entry);
    lua_insert(L, 1);
    sb_arena_set_limit(a, sb_arena_live(a) + budget);
    if (sb_snap_take(a, &out->snap) < 0) {
        snprintf(r->err, sizeof r->err, "out of memory (snapshot)");
        goto err;
    }
    if (getenv("SANDBOX_DEBUG"))
        fprintf(stderr, "sandbox: %s: snapshot %zu bytes (%zu pages), live %zu\n", name,
                out->snap.len, out->snap.npages, sb_arena_live(a));
    out->a = a;
    out->L = L;
    out->rand = b.rand;
    return 0;
err:
    sb_arena_free(a);
    return -1;
}

static void slot_drop_state(slot_t *s)
{
    sb_arena_free(s->a);
    sb_snap_free(&s->snap);
    version_release(s->ver);
    s->a = NULL;
    s->L = NULL;
    s->ver = NULL;
    s->rand = NULL;
}

static void report(const tenant_t *t, const char *what, const char *why)
{
    if (!reg.cfg.quiet)
        fprintf(stderr, "sandbox: tenant %s: %s: %s\n", t->name, what, why);
}

/* Move the state built in `from` into s (whose own state goes). */
static void slot_adopt(slot_t *s, slot_t *from)
{
    slot_drop_state(s);
    s->a = from->a;
    s->snap = from->snap;
    s->L = from->L;
    s->rand = from->rand;
    s->ver = from->ver;
    from->a = NULL;
    memset(&from->snap, 0, sizeof from->snap);
    from->L = NULL;
    from->rand = NULL;
    from->ver = NULL;
}

/* ---- the loader ---- */

static void job_release(job_t *j)
{
    if (__atomic_sub_fetch(&j->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    slot_drop_state(&j->built); /* a state nobody took */
    version_release(j->v);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

/* Mark j ended and call its waiters (once: a later call finds none). The
 * waiters run outside the lock, and each is read before it is called: its
 * owner may free it from then on. */
static void job_end(job_t *j)
{
    pthread_mutex_lock(&j->lock);
    sandbox_waiter_t *w = j->waiters;
    j->waiters = NULL;
    __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&j->lock);
    while (w) {
        sandbox_waiter_t *next = w->next;
        w->ready(w);
        w = next;
    }
}

/* Give up a job taken off its slot (superseded, removed, runner freed):
 * the loader skips it, or throws its result away. Its waiters are told now,
 * so that they run again and find what the slot has instead. */
static void job_cancel(job_t *j)
{
    if (!j)
        return;
    __atomic_store_n(&j->cancelled, 1, __ATOMIC_RELAXED);
    job_end(j);
    job_release(j);
}

/* A new job for generation gen of t: version v (whose reference it takes). */
static job_t *job_new(tenant_t *t, version_t *v, uint64_t gen)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->refs = 1;
    pthread_mutex_init(&j->lock, NULL);
    j->t = t;
    j->v = v;
    j->gen = gen;
    return j;
}

/* Put j in s (t->lock held); what was there is returned, to cancel once
 * the lock is released. */
static job_t *slot_swap_job(slot_t *s, job_t *j)
{
    return __atomic_exchange_n(&s->job, j, __ATOMIC_ACQ_REL);
}

/* The slot has a job: if it has ended, take its state (if it made one). */
static void slot_poll(slot_t *s)
{
    tenant_t *t = s->t;
    pthread_mutex_lock(&t->lock);
    job_t *j = s->job;
    if (j && __atomic_load_n(&j->done, __ATOMIC_ACQUIRE))
        slot_swap_job(s, NULL);
    else
        j = NULL;
    pthread_mutex_unlock(&t->lock);
    if (!j)
        return;
    if (j->ok)
        slot_adopt(s, &j->built);
    job_release(j);
}

/* Queue j for the loader (which then holds a reference). Takes ld.lock,
 * possibly under a tenant's lock (never the other way round). Returns 0, or
 * -ESRCH when the loader is not running. */
static int loader_submit(job_t *j)
{
    int rc = 0;
    pthread_mutex_lock(&ld.lock);
    if (!ld.running || ld.stop) {
        rc = -ESRCH;
    } else {
        __atomic_add_fetch(&j->refs, 1, __ATOMIC_ACQ_REL);
        j->next = NULL;
        if (ld.tail)
            ld.tail->next = j;
        else
            ld.head = j;
        ld.tail = j;
        pthread_cond_signal(&ld.more);
    }
    pthread_mutex_unlock(&ld.lock);
    return rc;
}

/* A version of t failed to build; limit is build()'s: 1 memory, 2 time,
 * 3 stack, 0 another failure. */
static void count_load_failure(tenant_t *t, int limit)
{
    pthread_mutex_lock(&t->lock);
    t->reload_errors++;
    t->load_limit_memory += limit == 1;
    t->load_limit_time += limit == 2;
    t->load_limit_stack += limit == 3;
    pthread_mutex_unlock(&t->lock);
}

/* Build j's version on the loader's runner r (NULL: could not be made). */
static void loader_build(sandbox_runner_t *r, job_t *j)
{
    tenant_t *t = j->t;
    int limit = 0;
    const char *why = r ? r->err : "out of memory (runner)";
    if (r && build(r, t->name, j->v, &j->built, &limit) == 0) {
        j->built.ver = j->v;
        j->v = NULL;
        j->ok = 1;
        return;
    }
    /* Validated once already: this is a chunk that behaves differently from
     * one run to the next. The runner keeps serving what it had. */
    count_load_failure(t, limit);
    report(t, "build for a runner failed, its previous version kept", why);
}

static void *loader_main(void *arg)
{
    (void)arg;
    /* Its own runner: the time limit's guard for this thread. */
    sandbox_runner_t *r = sandbox_runner_new();
    for (;;) {
        pthread_mutex_lock(&ld.lock);
        while (!ld.head && !ld.stop)
            pthread_cond_wait(&ld.more, &ld.lock);
        job_t *j = ld.head;
        if (j) {
            ld.head = j->next;
            if (!ld.head)
                ld.tail = NULL;
        }
        int stop = ld.stop;
        pthread_mutex_unlock(&ld.lock);
        if (!j)
            break;
        /* Stopping: what is queued ends unbuilt (its waiters still hear). */
        if (!stop && !__atomic_load_n(&j->cancelled, __ATOMIC_RELAXED)) {
            if (!r)
                r = sandbox_runner_new();
            loader_build(r, j);
        }
        job_end(j);
        job_release(j);
    }
    sandbox_runner_free(r);
    return NULL;
}

static int loader_start(void)
{
    pthread_mutex_lock(&ld.lock);
    ld.stop = 0;
    ld.running = 1;
    int rc = pthread_create(&ld.thread, NULL, loader_main, NULL);
    if (rc)
        ld.running = 0;
    pthread_mutex_unlock(&ld.lock);
    return -rc;
}

static void loader_stop(void)
{
    pthread_mutex_lock(&ld.lock);
    int was = ld.running;
    ld.stop = 1;
    pthread_cond_signal(&ld.more);
    pthread_mutex_unlock(&ld.lock);
    if (!was)
        return;
    pthread_join(ld.thread, NULL);
    pthread_mutex_lock(&ld.lock);
    ld.running = 0;
    pthread_mutex_unlock(&ld.lock);
}

/* The tenant has a new generation. Nothing is built here: its publisher
 * has given this slot a state (or a job building one) already, or the slot
 * takes the spare, or asks the loader for one; it serves its previous
 * version meanwhile. */
static void refresh(slot_t *s)
{
    tenant_t *t = s->t;
    job_t *old = NULL;
    slot_t *spare = NULL;
    pthread_mutex_lock(&t->lock);
    version_t *v = t->cur;
    uint64_t gen = t->gen;
    job_t *j = s->job;
    if (!v) {
        old = slot_swap_job(s, NULL);
    } else if (!j || j->gen != gen) { /* not given one: a slot new since */
        if (t->spare) {
            spare = t->spare; /* always of cur */
            t->spare = NULL;
            old = slot_swap_job(s, NULL);
        } else if ((j = job_new(t, v, gen)) != NULL) {
            __atomic_add_fetch(&v->refs, 1, __ATOMIC_ACQ_REL);
            if (loader_submit(j) == 0) {
                old = slot_swap_job(s, j);
            } else {
                job_release(j);
                gen = (uint64_t)-1; /* no loader: ask again at the next request */
            }
        } else {
            gen = (uint64_t)-1; /* out of memory: the same */
        }
    }
    pthread_mutex_unlock(&t->lock);
    job_cancel(old); /* of an older generation */
    s->gen = gen;
    s->removed = v == NULL;
    if (!v)
        slot_drop_state(s);
    if (spare) {
        slot_adopt(s, spare);
        free(spare);
    }
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
    if (running == r)
        running = NULL;
    sb_guard_unregister(&r->guard);
    for (size_t i = 0; i < r->cap; i++) {
        slot_t *s = r->tab[i];
        if (!s)
            continue;
        tenant_t *t = s->t;
        pthread_mutex_lock(&t->lock);
        job_t *j = slot_swap_job(s, NULL);
        for (counts_t **p = &t->counts; *p; p = &(*p)->next)
            if (*p == s->counts) {
                *p = s->counts->next;
                break;
            }
        counts_t *c = s->counts;
        t->retired.requests += c->requests;
        for (int k = 0; k < SB_OUTCOMES; k++)
            t->retired.outcomes[k] += c->outcomes[k];
        t->retired.limit_memory += c->limit_memory;
        t->retired.limit_time += c->limit_time;
        t->retired.limit_stack += c->limit_stack;
        t->retired.ticks += c->ticks;
        t->retired.restored += c->restored;
        pthread_mutex_unlock(&t->lock);
        job_cancel(j);
        slot_drop_state(s);
        free(c);
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

static slot_t *slot_lookup(sandbox_runner_t *r, const char *name, size_t n)
{
    size_t i = name_hash(name, n) & (r->cap - 1);
    for (slot_t *s; (s = r->tab[i]) != NULL; i = (i + 1) & (r->cap - 1))
        if (s->name_len == n && memcmp(s->name, name, n) == 0)
            return s;
    return NULL;
}

static int slot_insert(sandbox_runner_t *r, slot_t *s)
{
    if (2 * (r->n + 1) > r->cap) {
        size_t cap = r->cap * 2;
        slot_t **tab = calloc(cap, sizeof *tab);
        if (!tab)
            return -ENOMEM;
        for (size_t j = 0; j < r->cap; j++) {
            slot_t *o = r->tab[j];
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
static slot_t *slot_new(sandbox_runner_t *r, const char *name, size_t n)
{
    if (!valid_name(name, n))
        return NULL;
    pthread_mutex_lock(&reg.lock);
    tenant_t *t = tenant_find(name, n, 0);
    pthread_mutex_unlock(&reg.lock);
    if (!t)
        return NULL;
    slot_t *s = calloc(1, sizeof *s);
    counts_t *c = calloc(1, sizeof *c);
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
    pthread_mutex_lock(&t->lock);
    c->next = t->counts;
    t->counts = c;
    pthread_mutex_unlock(&t->lock);
    return s;
err:
    free(s);
    free(c);
    return NULL;
}

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

/* Protected, inside the limits: handle(req). Stack on entry: handle, req,
 * the runner (whose request req's fields come from). */
static int entry(lua_State *L)
{
    lua_settop(L, 2);
    lua_call(L, 1, 3);
    return 3;
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
    pcall_args_t pa = {L, 3, 3, LUA_OK};
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
    sb_guard_call(g, run_pcall, &pa);
    sb_guard_leave(g);
    return pa.st;
}

int sandbox_run(sandbox_runner_t *r, const char *name, size_t name_len, const sandbox_req_t *req,
                sandbox_resp_t *resp)
{
    slot_t *s = slot_lookup(r, name, name_len);
    if (!s && !(s = slot_new(r, name, name_len)))
        return -ENOENT;
    if (__atomic_load_n(&s->t->gen, __ATOMIC_ACQUIRE) != s->gen)
        refresh(s);
    if (__atomic_load_n(&s->job, __ATOMIC_RELAXED))
        slot_poll(s);
    if (s->removed)
        return -ENOENT;
    if (!s->a && __atomic_load_n(&s->job, __ATOMIC_RELAXED))
        return -EAGAIN; /* its first state here is being built */
    resp->content_type = "text/plain";
    resp->body = "";
    resp->body_len = 0;
    resp->outcome = SB_OK;
    counts_t *c = s->counts;
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
     * time in the sandbox (restore, reseed, call) goes into a bucket that
     * drains at the tenant's share of the clock (SHARE_PCT by default);
     * while the bucket is over SHARE_BURST_MS the tenant is answered 503
     * without running. A busy tenant thus runs at most one request at a
     * time once past its burst, and holds the thread about its share of the
     * time in the long run (plus one request); the others wait for at most
     * one of its requests. A hello (0.5 us in the sandbox against some 10 us
     * of the loop's own work per request) is nowhere near a quarter. */
    int64_t now = sb_ticks();
    int pct = s->ver->lim.share_pct;
    int64_t drained = (now - s->share_at) / 100 * pct;
    s->share = s->share > drained ? s->share - drained : 0;
    s->share_at = now;
    if (pct < 100 && s->share > (int64_t)SHARE_BURST_MS * sb_ticks_per_ms) {
        fail(r, resp, SB_THROTTLED, 503, "tenant over its share of the CPU");
        bump(&c->outcomes[SB_THROTTLED], 1);
        return 0;
    }
    sb_snap_restore(s->a, &s->snap);
    bump(&c->restored, s->snap.copied);
    if (s->rand)
        reseed(r, s->rand);

    lua_State *L = s->L;
    int ms = s->ver->lim.ms;
    r->req = req;
    running = r;
    int64_t t0 = sb_ticks();
    int st = guarded_call(r, L, ms, t0);
    int64_t end = sb_ticks(), took = end - t0;
    r->req = NULL;
    bump(&c->ticks, (uint64_t)(end - now)); /* the restore and the reseed count too */
    s->share += end - now;

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
        char why[ERR_MAX - 16];
        describe(L, why, sizeof why);
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
    slot_t *s = slot_lookup(r, name, name_len);
    int rc = -EALREADY;
    if (!s)
        return rc;
    /* Under the tenant's lock: a publisher may replace the job (and then
     * cancel it, which tells its waiters). */
    pthread_mutex_lock(&s->t->lock);
    job_t *j = s->job;
    if (j) {
        pthread_mutex_lock(&j->lock);
        if (!__atomic_load_n(&j->done, __ATOMIC_RELAXED)) {
            w->next = j->waiters;
            j->waiters = w;
            rc = 0;
        }
        pthread_mutex_unlock(&j->lock);
    }
    pthread_mutex_unlock(&s->t->lock);
    return rc;
}

void sandbox_runner_trim(sandbox_runner_t *r)
{
    for (size_t i = 0; i < r->cap; i++) {
        slot_t *s = r->tab[i];
        if (!s || !s->a || sb_arena_used(s->a) <= s->snap.len + (256 << 10))
            continue;
        sb_snap_restore(s->a, &s->snap);
        sb_arena_trim(s->a, s->snap.len);
    }
}

/* ---- publishing ---- */

static void update_shortest(void)
{
    int ms = reg.cfg.ms;
    pthread_mutex_lock(&reg.lock);
    for (tenant_t *t = reg.list; t; t = t->next) {
        pthread_mutex_lock(&t->lock);
        if (t->cur && t->cur->lim.ms < ms)
            ms = t->cur->lim.ms;
        pthread_mutex_unlock(&t->lock);
    }
    pthread_mutex_unlock(&reg.lock);
    sb_limit_shortest(ms);
}

static void spare_free(slot_t *spare)
{
    if (spare) {
        slot_drop_state(spare);
        free(spare);
    }
}

/* A new version v (generation gen) of t, built in spare, is published (t's
 * lock held): give every runner serving t its new state now, so that none
 * serves the old version any longer than a build takes. The first slot gets
 * spare, ended already; the others get jobs for the loader. A slot left
 * without (out of memory) asks for itself on its next request; with no
 * slot at all, spare waits for the first runner. Returns the jobs the slots
 * had, linked through stale, to cancel once the lock is released. */
static job_t *deliver(tenant_t *t, version_t *v, uint64_t gen, slot_t *spare)
{
    job_t *stale = NULL;
    for (counts_t *c = t->counts; c; c = c->next) {
        job_t *j = job_new(t, NULL, gen);
        if (!j)
            continue;
        if (spare) {
            slot_adopt(&j->built, spare);
            free(spare);
            spare = NULL;
            j->ok = 1;
            j->done = 1;
        } else {
            j->v = v;
            __atomic_add_fetch(&v->refs, 1, __ATOMIC_ACQ_REL);
            if (loader_submit(j) < 0) {
                job_release(j);
                continue;
            }
        }
        job_t *old = slot_swap_job(c->slot, j);
        if (old) {
            old->stale = stale;
            stale = old;
        }
    }
    t->spare = spare;
    return stale;
}

/* Validate and publish a version of t. Returns 0 or -ENOEXEC (err says why). */
static int publish(tenant_t *t, const char *src, size_t len, const sandbox_limits_t *lim, char *err,
                   size_t errlen)
{
    version_t *v = calloc(1, sizeof *v);
    char *copy = malloc(len + 1);
    slot_t *spare = calloc(1, sizeof *spare);
    int rc = -ENOMEM, limit = 0;
    sandbox_runner_t *r = NULL;
    if (!v || !copy || !spare)
        goto err;
    memcpy(copy, src, len);
    copy[len] = 0;
    *v = (version_t){1, copy, len, *lim};
    if (v->lim.share_pct <= 0)
        v->lim.share_pct = reg.cfg.share_pct;
    if (v->lim.share_pct > 100)
        v->lim.share_pct = 100;
    r = sandbox_runner_new();
    if (!r)
        goto err;
    if (build(r, t->name, v, spare, &limit) < 0) {
        snprintf(err, errlen, "%s", r->err);
        rc = -ENOEXEC;
        goto err;
    }
    sandbox_runner_free(r);
    spare->ver = v;
    v->refs = 2;
    pthread_mutex_lock(&t->lock);
    version_t *old = t->cur;
    slot_t *old_spare = t->spare;
    t->cur = v;
    t->spare = NULL;
    t->reloads++;
    uint64_t gen = __atomic_add_fetch(&reg.gen, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&t->gen, gen, __ATOMIC_RELEASE);
    job_t *stale = deliver(t, v, gen, spare);
    pthread_mutex_unlock(&t->lock);
    version_release(old);
    spare_free(old_spare);
    while (stale) {
        job_t *next = stale->stale;
        job_cancel(stale);
        stale = next;
    }
    update_shortest();
    return 0;
err:
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    sandbox_runner_free(r);
    free(spare);
    free(copy);
    free(v);
    count_load_failure(t, limit);
    return rc;
}

static void unpublish(tenant_t *t)
{
    pthread_mutex_lock(&t->lock);
    version_t *old = t->cur;
    slot_t *old_spare = t->spare;
    t->cur = NULL;
    t->spare = NULL;
    uint64_t gen = __atomic_add_fetch(&reg.gen, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&t->gen, gen, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&t->lock);
    version_release(old);
    spare_free(old_spare);
}

int sandbox_put(const char *name, const char *src, size_t len, const sandbox_limits_t *lim,
                char *err, size_t errlen)
{
    size_t n = strlen(name);
    sandbox_limits_t dflt = {reg.cfg.mem_kb, reg.cfg.ms, 0};
    if (!valid_name(name, n)) {
        snprintf(err, errlen, "bad tenant name");
        return -EINVAL;
    }
    pthread_mutex_lock(&reg.lock);
    tenant_t *t = tenant_find(name, n, 1);
    pthread_mutex_unlock(&reg.lock);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return publish(t, src, len, lim ? lim : &dflt, err, errlen);
}

int sandbox_remove(const char *name)
{
    pthread_mutex_lock(&reg.lock);
    tenant_t *t = tenant_find(name, strlen(name), 0);
    pthread_mutex_unlock(&reg.lock);
    if (!t)
        return -ENOENT;
    pthread_mutex_lock(&t->lock);
    int served = t->cur != NULL;
    pthread_mutex_unlock(&t->lock);
    if (!served)
        return -ENOENT;
    unpublish(t);
    return 0;
}

/* ---- the tenants directory ---- */

static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *p = NULL;
    size_t n = 0;
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    p = malloc(SRC_MAX + 1);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    for (;;) {
        ssize_t r = read(fd, p + n, SRC_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto err;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > SRC_MAX) {
            snprintf(err, errlen, "%s: larger than %d bytes", path, SRC_MAX);
            goto err;
        }
    }
    close(fd);
    p[n] = 0;
    *out = p;
    *len = n;
    return 0;
err:
    free(p);
    close(fd);
    return -1;
}

/* DIR/<name>.conf: `mem_kb = N`, `ms = N` and `share = N` lines, # comments. */
static int parse_conf(const char *text, sandbox_limits_t *lim, char *err, size_t errlen)
{
    int line = 0;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, '\n');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char buf[128], key[32];
        long val;
        char extra;
        line++;
        snprintf(buf, sizeof buf, "%.*s", (int)(n < 127 ? n : 127), p);
        char *hash = strchr(buf, '#');
        if (hash)
            *hash = 0;
        p += n + (end != NULL);
        if (strspn(buf, " \t\r") == strlen(buf))
            continue;
        if (sscanf(buf, " %31[a-z_] = %ld %c", key, &val, &extra) != 2) {
            snprintf(err, errlen, "line %d: want `mem_kb = N`, `ms = N` or `share = N`", line);
            return -1;
        }
        if (strcmp(key, "mem_kb") == 0 && val >= 64 && val <= (1 << 20)) {
            lim->mem_kb = (int)val;
        } else if (strcmp(key, "ms") == 0 && val >= 1 && val <= 600000) {
            lim->ms = (int)val;
        } else if (strcmp(key, "share") == 0 && val >= 1 && val <= 100) {
            lim->share_pct = (int)val;
        } else {
            snprintf(err, errlen,
                     "line %d: unknown key or value out of range "
                     "(mem_kb 64..1048576, ms 1..600000, share 1..100)",
                     line);
            return -1;
        }
    }
    return 0;
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Load DIR/<name>.lua (and .conf) as a new version of t. 1 published, 0 not. */
static int load_file(tenant_t *t, const char *dir)
{
    char path[4096], err[ERR_MAX];
    char *src = NULL, *conf = NULL;
    size_t len, clen;
    sandbox_limits_t lim = {reg.cfg.mem_kb, reg.cfg.ms, 0};
    int published = 0;
    if (t->has_conf) {
        snprintf(path, sizeof path, "%s/%s.conf", dir, t->name);
        if (read_file(path, &conf, &clen, err, sizeof err) < 0)
            goto bad;
        char cerr[160];
        if (parse_conf(conf, &lim, cerr, sizeof cerr) < 0) {
            snprintf(err, sizeof err, "%s.conf: %s", t->name, cerr);
            goto bad;
        }
    }
    snprintf(path, sizeof path, "%s/%s.lua", dir, t->name);
    if (read_file(path, &src, &len, err, sizeof err) < 0)
        goto bad;
    if (publish(t, src, len, &lim, err, sizeof err) < 0) {
        report(t, "did not load, previous version kept", err);
        goto out;
    }
    published = 1;
    if (!reg.cfg.quiet)
        fprintf(stderr, "sandbox: tenant %s loaded (mem_kb %d, ms %d)\n", t->name, lim.mem_kb, lim.ms);
    goto out;
bad:
    pthread_mutex_lock(&t->lock);
    t->reload_errors++;
    pthread_mutex_unlock(&t->lock);
    report(t, "did not load, previous version kept", err);
out:
    free(src);
    free(conf);
    return published;
}

int sandbox_scan(void)
{
    const char *dir = reg.cfg.dir;
    int changed = 0;
    if (!dir)
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    pthread_mutex_lock(&reg.lock);
    for (tenant_t *t = reg.list; t; t = t->next)
        t->seen = 0;
    pthread_mutex_unlock(&reg.lock);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0 || !valid_name(e->d_name, n - 4))
            continue;
        char path[4096];
        struct stat ls, cs;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &ls) < 0 || !S_ISREG(ls.st_mode))
            continue;
        snprintf(path, sizeof path, "%s/%.*s.conf", dir, (int)(n - 4), e->d_name);
        int has_conf = stat(path, &cs) == 0;
        pthread_mutex_lock(&reg.lock);
        tenant_t *t = tenant_find(e->d_name, n - 4, 1);
        pthread_mutex_unlock(&reg.lock);
        if (!t)
            continue;
        t->seen = 1;
        /* Unchanged (loaded, or failed and already reported): nothing to do. */
        if (t->from_dir && same_file(&t->lua_st, &ls) && has_conf == t->has_conf &&
            (!has_conf || same_file(&t->conf_st, &cs)))
            continue;
        t->from_dir = 1;
        t->lua_st = ls;
        t->has_conf = has_conf;
        if (has_conf)
            t->conf_st = cs;
        changed += load_file(t, dir);
    }
    closedir(d);
    pthread_mutex_lock(&reg.lock);
    tenant_t *list = reg.list;
    pthread_mutex_unlock(&reg.lock);
    for (tenant_t *t = list; t; t = t->next) {
        if (!t->from_dir || t->seen)
            continue;
        t->from_dir = 0;
        if (t->cur) {
            unpublish(t);
            changed++;
            if (!reg.cfg.quiet)
                fprintf(stderr, "sandbox: tenant %s removed\n", t->name);
        }
    }
    return changed;
}

static void *reloader_main(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&reg.stop, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {reg.interval_ms / 1000, (long)(reg.interval_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
        sandbox_scan();
    }
    return NULL;
}

int sandbox_start_reloader(int interval_ms)
{
    if (reg.reloading)
        return 0;
    reg.interval_ms = interval_ms > 0 ? interval_ms : 200;
    reg.stop = 0;
    int rc = pthread_create(&reg.reloader, NULL, reloader_main, NULL);
    if (rc)
        return -rc;
    reg.reloading = 1;
    return 0;
}

/* ---- set-up ---- */

/* Call, once, the libc functions Lua reaches from the safe libraries, so
 * their lazy symbols are bound before any sandboxed call could be cut in
 * the middle of binding one (see sandbox_limit.c). */
static const char warm_src[] =
    "local s = string.format('%d %5.2f %g %e %a %x %o %c %s %q %i %u %10.3s', 42, 3.14159,"
    " 1e300, 2.5, 0.1, 255, 8, 65, 'x', 1/3, -7, 7, 'abcdef')\n"
    "local n = tonumber('1.5e3') + tonumber('0x1p4') + tonumber(' 12 ') + tonumber('7', 8)\n"
    "local t = {}\n"
    "for k, f in pairs(math) do if type(f) == 'function' and k ~= 'randomseed' then"
    " pcall(f, 0.5, 0.25) end end\n"
    "math.randomseed(); math.randomseed(1, 2)\n"
    "t[1] = ('Hello'):upper() .. ('Hello'):lower() .. ('x'):rep(3, ',')\n"
    "t[2] = tostring(1.5) .. tostring(2^63) .. tostring(-0.0) .. (7 // 2) .. (7.5 % 2) .. (2^0.5)\n"
    "t[3] = ('abc' < 'abd') and ('a\\0b' < 'a\\0c') and 1 or 0\n"
    "for w in ('one two three'):gmatch('%a+') do t[#t + 1] = w end\n"
    "t[#t + 1] = ('  x  '):match('^%s*(.-)%s*$') .. ('hello world'):find('o w', 1, true)\n"
    "t[#t + 1] = ('hello'):gsub('l', 'L') .. ('%d'):format(3) .. string.byte('A') .. string.char(66)\n"
    "t[#t + 1] = utf8.char(228, 8364) .. utf8.len('\\u{e4}') .. table.concat({1, 2, 3}, ',')\n"
    "table.sort(t, function(a, b) return tostring(a) < tostring(b) end)\n"
    "t[#t + 1] = select('#', pcall(error, {})) .. select(2, pcall(error, 'x'))\n"
    "t[#t + 1] = load('return 1 + 1')() .. #string.pack('i4 d s1', 1, 2.5, 'z')\n"
    "local co = coroutine.wrap(function(a) coroutine.yield(a) end); co(1)\n"
    "pcall(coroutine.wrap(function() local x <close> = setmetatable({}, {__close = function() end})"
    " error('x') end))\n"
    "co = coroutine.create(function() coroutine.yield() end); coroutine.resume(co)"
    " coroutine.close(co)\n"
    "t[#t + 1] = math.tointeger(3.0) .. math.fmod(7, 3) .. tostring(math.ult(1, 2)) .. (1e308 * 10)\n"
    "t[#t + 1] = ('%5.1f'):format(-1/0) .. ('x'):rep(0) .. string.reverse('ab')\n"
    "function handle() return s .. n end\n";

static void warm_up(void)
{
    sandbox_runner_t *r = sandbox_runner_new();
    version_t v = {1, (char *)warm_src, sizeof warm_src - 1, {4096, 2000, 100}};
    slot_t tmp = {0};
    int limit;
    if (!r)
        return;
    if (build(r, "warm-up", &v, &tmp, &limit) == 0) {
        sandbox_req_t q = {"GET", 3, "/", 1, NULL, 0, NULL, 0, NULL, 0};
        r->req = &q;
        running = r;
        lua_pushlightuserdata(tmp.L, r);
        lua_pcall(tmp.L, 3, 3, 0);
        r->req = NULL;
        tmp.ver = NULL;
        slot_drop_state(&tmp);
    } else if (!reg.cfg.quiet) {
        fprintf(stderr, "sandbox: warm-up failed: %s\n", r->err);
    }
    sandbox_runner_free(r);
}

int sandbox_init(const sandbox_cfg_t *cfg, char *err, size_t errlen)
{
    if (reg.ready) {
        snprintf(err, errlen, "sandbox already set up");
        return -EALREADY;
    }
    reg.cfg = *cfg;
    if (reg.cfg.mem_kb <= 0)
        reg.cfg.mem_kb = 4096;
    if (reg.cfg.ms <= 0)
        reg.cfg.ms = 100;
    if (reg.cfg.share_pct <= 0)
        reg.cfg.share_pct = SHARE_PCT;
    if (reg.cfg.share_pct > 100)
        reg.cfg.share_pct = 100;
    int rc = sb_limit_init();
    if (rc < 0) {
        snprintf(err, errlen, "sandbox: time limit set-up: %s", strerror(-rc));
        return rc;
    }
    if ((rc = sb_snap_init()) < 0) {
        snprintf(err, errlen, "sandbox: snapshot set-up: %s", strerror(-rc));
        return rc;
    }
    sb_limit_shortest(reg.cfg.ms);
    warm_up();
    if ((rc = loader_start()) < 0) {
        snprintf(err, errlen, "sandbox: loader thread: %s", strerror(-rc));
        return rc;
    }
    metrics_add_writer(sandbox_metrics, NULL);
    reg.ready = 1;
    if (cfg->dir) {
        rc = sandbox_scan();
        if (rc < 0) {
            snprintf(err, errlen, "tenants directory %s: %s", cfg->dir, strerror(-rc));
            return rc;
        }
    }
    return 0;
}

int sandbox_claim_faults(void) { return sb_snap_claim(); }

void sandbox_shutdown(void)
{
    if (reg.reloading) {
        __atomic_store_n(&reg.stop, 1, __ATOMIC_RELEASE);
        pthread_join(reg.reloader, NULL);
        reg.reloading = 0;
    }
    loader_stop();
    sb_limit_shutdown();
    pthread_mutex_lock(&reg.lock);
    tenant_t *t = reg.list;
    reg.list = NULL;
    pthread_mutex_unlock(&reg.lock);
    while (t) {
        tenant_t *next = t->next;
        version_release(t->cur);
        spare_free(t->spare);
        pthread_mutex_destroy(&t->lock);
        free(t);
        t = next;
    }
    reg.ready = 0;
}

/* ---- counters ---- */

static void sum_stats(tenant_t *t, sandbox_stats_t *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&t->lock);
    counts_t all = t->retired;
    for (counts_t *c = t->counts; c; c = c->next) {
        all.requests += get(&c->requests);
        for (int k = 0; k < SB_OUTCOMES; k++)
            all.outcomes[k] += get(&c->outcomes[k]);
        all.limit_memory += get(&c->limit_memory);
        all.limit_time += get(&c->limit_time);
        all.limit_stack += get(&c->limit_stack);
        all.ticks += get(&c->ticks);
        all.restored += get(&c->restored);
    }
    st->reloads = t->reloads;
    st->reload_errors = t->reload_errors;
    st->limit_memory = all.limit_memory + t->load_limit_memory;
    st->limit_time = all.limit_time + t->load_limit_time;
    st->limit_stack = all.limit_stack + t->load_limit_stack;
    st->loaded = t->cur != NULL;
    pthread_mutex_unlock(&t->lock);
    st->requests = all.requests;
    memcpy(st->outcomes, all.outcomes, sizeof st->outcomes);
    st->seconds = (double)all.ticks / (double)sb_ticks_per_ms / 1e3;
    st->restored_bytes = all.restored;
}

int sandbox_stats(const char *name, sandbox_stats_t *st)
{
    pthread_mutex_lock(&reg.lock);
    tenant_t *t = tenant_find(name, strlen(name), 0);
    pthread_mutex_unlock(&reg.lock);
    if (!t)
        return -ENOENT;
    sum_stats(t, st);
    return 0;
}

void sandbox_metrics(buf_t *out, void *ctx)
{
    static const char *const kinds[SB_OUTCOMES] = {"ok", "lua_error", "memory", "timeout",
                                                   "bad_return", "not_loaded", "throttled",
                                                   "stack"};
    (void)ctx;
    pthread_mutex_lock(&reg.lock);
    tenant_t *list = reg.list;
    pthread_mutex_unlock(&reg.lock);
    buf_printf(out, "# TYPE sandbox_requests_total counter\n"
                    "# TYPE sandbox_errors_total counter\n"
                    "# TYPE sandbox_limit_hits_total counter\n"
                    "# TYPE sandbox_seconds_total counter\n"
                    "# TYPE sandbox_restored_bytes_total counter\n"
                    "# TYPE sandbox_reloads_total counter\n"
                    "# TYPE sandbox_reload_errors_total counter\n"
                    "# TYPE sandbox_tenant_loaded gauge\n");
    /* Records are only ever added at the head, so the list from here on
     * is stable without the lock. */
    for (tenant_t *t = list; t; t = t->next) {
        sandbox_stats_t st;
        sum_stats(t, &st);
        const char *n = t->name;
        buf_printf(out, "sandbox_requests_total{tenant=\"%s\"} %llu\n", n,
                   (unsigned long long)st.requests);
        for (int k = 1; k < SB_OUTCOMES; k++)
            buf_printf(out, "sandbox_errors_total{tenant=\"%s\",kind=\"%s\"} %llu\n", n, kinds[k],
                       (unsigned long long)st.outcomes[k]);
        buf_printf(out,
                   "sandbox_limit_hits_total{tenant=\"%s\",limit=\"memory\"} %llu\n"
                   "sandbox_limit_hits_total{tenant=\"%s\",limit=\"time\"} %llu\n"
                   "sandbox_limit_hits_total{tenant=\"%s\",limit=\"stack\"} %llu\n"
                   "sandbox_seconds_total{tenant=\"%s\"} %.6f\n"
                   "sandbox_restored_bytes_total{tenant=\"%s\"} %llu\n"
                   "sandbox_reloads_total{tenant=\"%s\"} %llu\n"
                   "sandbox_reload_errors_total{tenant=\"%s\"} %llu\n"
                   "sandbox_tenant_loaded{tenant=\"%s\"} %d\n",
                   n, (unsigned long long)st.limit_memory, n, (unsigned long long)st.limit_time, n,
                   (unsigned long long)st.limit_stack, n,
                   st.seconds, n, (unsigned long long)st.restored_bytes, n,
                   (unsigned long long)st.reloads, n,
                   (unsigned long long)st.reload_errors, n, st.loaded);
    }
}
