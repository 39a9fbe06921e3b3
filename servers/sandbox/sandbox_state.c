/* sandbox_state: building a tenant's Lua state, and the request API it is
 * given.
 *
 * A state is built once per (runner, version), on the thread of whoever
 * builds it (a publisher, the loader), never on a runner's: in a fresh arena
 * of its own (sandbox_arena.c), with the safe libraries only (base without
 * dofile, loadfile, collectgarbage and print; load of text chunks only;
 * string without dump; table, math, utf8, coroutine), then the tenant's
 * chunk, under the version's limits (the time limit at least LOAD_MS_MIN).
 * The built state is snapshotted; its Lua stack holds [entry, handle, req]
 * already, so a request pushes a single value before lua_pcall
 * (sandbox_run.c). req is an empty table whose fields are made on first read
 * (__index, and __pairs fills them all, from the request of the runner
 * running on the calling thread, sb_running): a tenant that ignores req pays
 * nothing for it. math.random's state is anchored where the request path can
 * reseed it.
 *
 * coroutine.resume, wrap and close are done again here, so that the time
 * limit knows which Lua thread runs (sandbox_limit.c).
 *
 * Every call into a tenant's state (its top-level code here, handle(req) in
 * sandbox_run.c) runs on the runner's own stack (sandbox_limit.c): nested C
 * calls that reach its end are cut like a timeout.
 *
 * SANDBOX_DEBUG=1 in the environment prints the size of every snapshot built
 * (hello: 18.6 KB in 5 pages, of which requests write 2: 8 KB copied back
 * per request, sandbox_restored_bytes_total in /metrics). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "sandbox_int.h"

#define ARENA_SLACK (1 << 20) /* arena = 3 x budget + this: room for free lists' waste */
#define LOAD_MS_MIN 1000      /* a version's top-level gets at least this long */
#define CALL_DEPTH  6         /* call frames made before the libraries */

__thread sandbox_runner_t *sb_running;

/* Build context: what the protected setup function needs and finds. */
typedef struct build {
    const sb_version_t *ver;
    const char *name;
    uint64_t *rand;
} build_t;

/* ---- the safe libraries and the request API ---- */

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
        sandbox_runner_t *r = sb_running;
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
    sandbox_runner_t *r = sb_running;
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!r || !r->req || lua_type(L, 2) != LUA_TSTRING)
        return 0;
    return req_field(L, r->req, lua_tostring(L, 2));
}

static int req_pairs(lua_State *L)
{
    static const char *const keys[] = {"method", "path", "query", "body", "headers", NULL};
    sandbox_runner_t *r = sb_running;
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
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {LUA_COLIBNAME, luaopen_coroutine},
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

/* ---- building a state ---- */

/* Protected, inside the limits: handle(req). Stack on entry: handle, req,
 * the runner (whose request req's fields come from). */
static int entry(lua_State *L)
{
    lua_settop(L, 2);
    lua_call(L, 1, 3);
    return 3;
}

void sb_run_pcall(void *p)
{
    sb_pcall_args_t *a = p;
    a->st = lua_pcall(a->L, a->nargs, a->nres, 0);
}

void sb_describe(lua_State *L, char *out, size_t cap)
{
    if (lua_type(L, -1) == LUA_TSTRING)
        snprintf(out, cap, "%s", lua_tostring(L, -1));
    else
        snprintf(out, cap, "error object is a %s", lua_typename(L, lua_type(L, -1)));
}

int sb_state_build(sandbox_runner_t *r, const char *name, const sb_version_t *v, sb_slot_t *out,
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
        sb_pcall_args_t pa = {L, 1, 2, LUA_OK};
        sb_guard_enter(g);
        lua_pushcfunction(L, setup);
        lua_pushlightuserdata(L, &b);
        sb_guard_call(g, sb_run_pcall, &pa);
        sb_guard_leave(g);
        int st = pa.st;
        if (sb_arena_settle(a) || st == LUA_ERRMEM) {
            snprintf(r->err, sizeof r->err, "memory limit exceeded (top-level)");
            *limit = 1;
        } else if (g->hit) {
            snprintf(r->err, sizeof r->err, "time limit exceeded (top-level)");
            *limit = 2;
        } else if (st != LUA_OK) {
            sb_describe(L, r->err, sizeof r->err);
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

void sb_state_drop(sb_slot_t *s)
{
    sb_arena_free(s->a);
    sb_snap_free(&s->snap);
    sb_version_release(s->ver);
    s->a = NULL;
    s->L = NULL;
    s->ver = NULL;
    s->rand = NULL;
}

void sb_state_move(sb_slot_t *s, sb_slot_t *from)
{
    sb_state_drop(s);
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
    "t[#t + 1] = ('hello'):gsub('l', 'L') .. ('%d'):format(3) .. string.byte('A') .. "
    "string.char(66)\n"
    "t[#t + 1] = utf8.char(228, 8364) .. utf8.len('\\u{e4}') .. table.concat({1, 2, 3}, ',')\n"
    "table.sort(t, function(a, b) return tostring(a) < tostring(b) end)\n"
    "t[#t + 1] = select('#', pcall(error, {})) .. select(2, pcall(error, 'x'))\n"
    "t[#t + 1] = load('return 1 + 1')() .. #string.pack('i4 d s1', 1, 2.5, 'z')\n"
    "local co = coroutine.wrap(function(a) coroutine.yield(a) end); co(1)\n"
    "pcall(coroutine.wrap(function() local x <close> = setmetatable({}, {__close = function() end})"
    " error('x') end))\n"
    "co = coroutine.create(function() coroutine.yield() end); coroutine.resume(co)"
    " coroutine.close(co)\n"
    "t[#t + 1] = math.tointeger(3.0) .. math.fmod(7, 3) .. tostring(math.ult(1, 2)) .. (1e308 * "
    "10)\n"
    "t[#t + 1] = ('%5.1f'):format(-1/0) .. ('x'):rep(0) .. string.reverse('ab')\n"
    "function handle() return s .. n end\n";

void sb_state_warm_up(int quiet)
{
    sandbox_runner_t *r = sandbox_runner_new();
    sb_version_t v = {1, (char *)warm_src, sizeof warm_src - 1, {4096, 2000, 100}};
    sb_slot_t tmp = {0};
    int limit;
    if (!r)
        return;
    if (sb_state_build(r, "warm-up", &v, &tmp, &limit) == 0) {
        sandbox_req_t q = {"GET", 3, "/", 1, NULL, 0, NULL, 0, NULL, 0};
        r->req = &q;
        sb_running = r;
        lua_pushlightuserdata(tmp.L, r);
        lua_pcall(tmp.L, 3, 3, 0);
        r->req = NULL;
        tmp.ver = NULL;
        sb_state_drop(&tmp);
    } else if (!quiet) {
        fprintf(stderr, "sandbox: warm-up failed: %s\n", r->err);
    }
    sandbox_runner_free(r);
}
