/* sandbox_registry: tenants, their versions, the loader, the tenants
 * directory and the reloader; set-up and counters.
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
 * once (sandbox_state.c builds it). A runner's thread serves requests, so
 * that never happens there. The publisher hands its own state to one runner
 * that serves the tenant, and has the loader thread build one for each of
 * the others, at once: the loader builds states one at a time (a single
 * thread: the loading of every tenant together takes at most one core from
 * the loops). A runner takes its new state between two requests, and keeps
 * serving the version it has until then. A runner that serves the tenant for
 * the first time takes the publisher's state if nobody did (the spare), or
 * asks the loader: until its state is built it answers -EAGAIN, and its
 * caller waits (sandbox_wait: the server defers the request and runs it when
 * built).
 *
 * The tenants directory: DIR/<name>.lua and DIR/<name>.conf, looked at by
 * sandbox_scan (the reloader's thread calls it every interval); a changed
 * file is published as a new version, a removed one unpublished. */
#include "sandbox.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/metrics.h"
#include "sandbox_int.h"

#define SHARE_PCT 25        /* of a runner's time, at most, for one tenant by default */
#define SRC_MAX   (1 << 20) /* largest tenant source */

/* ---- registry ---- */

static struct {
    pthread_mutex_t lock; /* guards the list and scanning */
    sb_tenant_t *list;
    uint64_t gen; /* atomic: last generation handed out */
    sandbox_cfg_t cfg;
    int ready;
    pthread_t reloader;
    int reloading, stop, interval_ms;
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t get(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

static int valid_name(const char *s, size_t n)
{
    if (n == 0 || n > SANDBOX_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

void sb_version_release(sb_version_t *v)
{
    if (v && __atomic_sub_fetch(&v->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(v->src);
        free(v);
    }
}

/* The tenant record for a name (reg.lock held), created when `create`. */
static sb_tenant_t *tenant_find(const char *name, size_t n, int create)
{
    for (sb_tenant_t *t = reg.list; t; t = t->next)
        if (strlen(t->name) == n && memcmp(t->name, name, n) == 0)
            return t;
    if (!create)
        return NULL;
    sb_tenant_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    memcpy(t->name, name, n);
    pthread_mutex_init(&t->lock, NULL);
    t->next = reg.list;
    reg.list = t;
    return t;
}

/* A tenant record, if name[0..n) is a valid name that has one. */
sb_tenant_t *sb_tenant_get(const char *name, size_t n)
{
    if (!valid_name(name, n))
        return NULL;
    pthread_mutex_lock(&reg.lock);
    sb_tenant_t *t = tenant_find(name, n, 0);
    pthread_mutex_unlock(&reg.lock);
    return t;
}

void sb_tenant_attach(sb_slot_t *s)
{
    sb_tenant_t *t = s->t;
    sb_counts_t *c = s->counts;
    pthread_mutex_lock(&t->lock);
    c->next = t->counts;
    t->counts = c;
    pthread_mutex_unlock(&t->lock);
}

static void report(const sb_tenant_t *t, const char *what, const char *why)
{
    if (!reg.cfg.quiet)
        fprintf(stderr, "sandbox: tenant %s: %s: %s\n", t->name, what, why);
}

/* ---- the loader ---- */

/* A state the loader builds for one runner's slot. Owned by the slot and,
 * while queued or being built, by the loader: the last to let go frees it. */
struct sb_job {
    int refs;             /* atomic */
    pthread_mutex_t lock; /* guards waiters, and done against them */
    int done;             /* atomic: ended (ok says how) */
    int cancelled;        /* atomic: the slot wants it no more */
    int ok;               /* built holds the state (written before done) */
    uint64_t gen;         /* the tenant's generation it is for */
    sb_tenant_t *t;
    sb_version_t *v; /* the version to build (ours until built holds it) */
    sb_slot_t built; /* the result: a, snap, L, rand, ver */
    sandbox_waiter_t *waiters;
    struct sb_job *next;  /* the loader's queue */
    struct sb_job *stale; /* a publisher's list of jobs to cancel */
};

/* The loader thread and its queue of jobs, first come first built. */
static struct {
    pthread_mutex_t lock; /* guards the queue, running, stop */
    pthread_cond_t more;
    sb_job_t *head, *tail;
    pthread_t thread;
    int running, stop;
} ld = {.lock = PTHREAD_MUTEX_INITIALIZER, .more = PTHREAD_COND_INITIALIZER};

static void job_release(sb_job_t *j)
{
    if (__atomic_sub_fetch(&j->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    sb_state_drop(&j->built); /* a state nobody took */
    sb_version_release(j->v);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

/* Mark j ended and call its waiters (once: a later call finds none). The
 * waiters run outside the lock, and each is read before it is called: its
 * owner may free it from then on. */
static void job_end(sb_job_t *j)
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
static void job_cancel(sb_job_t *j)
{
    if (!j)
        return;
    __atomic_store_n(&j->cancelled, 1, __ATOMIC_RELAXED);
    job_end(j);
    job_release(j);
}

/* A new job for generation gen of t: version v (whose reference it takes). */
static sb_job_t *job_new(sb_tenant_t *t, sb_version_t *v, uint64_t gen)
{
    sb_job_t *j = calloc(1, sizeof *j);
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
static sb_job_t *slot_swap_job(sb_slot_t *s, sb_job_t *j)
{
    return __atomic_exchange_n(&s->job, j, __ATOMIC_ACQ_REL);
}

void sb_slot_poll(sb_slot_t *s)
{
    sb_tenant_t *t = s->t;
    pthread_mutex_lock(&t->lock);
    sb_job_t *j = s->job;
    if (j && __atomic_load_n(&j->done, __ATOMIC_ACQUIRE))
        slot_swap_job(s, NULL);
    else
        j = NULL;
    pthread_mutex_unlock(&t->lock);
    if (!j)
        return;
    if (j->ok)
        sb_state_move(s, &j->built);
    job_release(j);
}

/* Queue j for the loader (which then holds a reference). Takes ld.lock,
 * possibly under a tenant's lock (never the other way round). Returns 0, or
 * -ESRCH when the loader is not running. */
static int loader_submit(sb_job_t *j)
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
static void count_load_failure(sb_tenant_t *t, int limit)
{
    pthread_mutex_lock(&t->lock);
    t->reload_errors++;
    t->load_limit_memory += limit == 1;
    t->load_limit_time += limit == 2;
    t->load_limit_stack += limit == 3;
    pthread_mutex_unlock(&t->lock);
}

/* Build j's version on the loader's runner r (NULL: could not be made). */
static void loader_build(sandbox_runner_t *r, sb_job_t *j)
{
    sb_tenant_t *t = j->t;
    int limit = 0;
    const char *why = r ? r->err : "out of memory (runner)";
    if (r && sb_state_build(r, t->name, j->v, &j->built, &limit) == 0) {
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
        sb_job_t *j = ld.head;
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

void sb_slot_refresh(sb_slot_t *s)
{
    sb_tenant_t *t = s->t;
    sb_job_t *old = NULL;
    sb_slot_t *spare = NULL;
    pthread_mutex_lock(&t->lock);
    sb_version_t *v = t->cur;
    uint64_t gen = t->gen;
    sb_job_t *j = s->job;
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
        sb_state_drop(s);
    if (spare) {
        sb_state_move(s, spare);
        free(spare);
    }
}

int sb_slot_wait(sb_slot_t *s, sandbox_waiter_t *w)
{
    int rc = -EALREADY;
    /* Under the tenant's lock: a publisher may replace the job (and then
     * cancel it, which tells its waiters). */
    pthread_mutex_lock(&s->t->lock);
    sb_job_t *j = s->job;
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

void sb_tenant_detach(sb_slot_t *s)
{
    sb_tenant_t *t = s->t;
    pthread_mutex_lock(&t->lock);
    sb_job_t *j = slot_swap_job(s, NULL);
    for (sb_counts_t **p = &t->counts; *p; p = &(*p)->next)
        if (*p == s->counts) {
            *p = s->counts->next;
            break;
        }
    sb_counts_t *c = s->counts;
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
}

/* ---- publishing ---- */

static void update_shortest(void)
{
    int ms = reg.cfg.ms;
    pthread_mutex_lock(&reg.lock);
    for (sb_tenant_t *t = reg.list; t; t = t->next) {
        pthread_mutex_lock(&t->lock);
        if (t->cur && t->cur->lim.ms < ms)
            ms = t->cur->lim.ms;
        pthread_mutex_unlock(&t->lock);
    }
    pthread_mutex_unlock(&reg.lock);
    sb_limit_shortest(ms);
}

static void spare_free(sb_slot_t *spare)
{
    if (spare) {
        sb_state_drop(spare);
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
static sb_job_t *deliver(sb_tenant_t *t, sb_version_t *v, uint64_t gen, sb_slot_t *spare)
{
    sb_job_t *stale = NULL;
    for (sb_counts_t *c = t->counts; c; c = c->next) {
        sb_job_t *j = job_new(t, NULL, gen);
        if (!j)
            continue;
        if (spare) {
            sb_state_move(&j->built, spare);
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
        sb_job_t *old = slot_swap_job(c->slot, j);
        if (old) {
            old->stale = stale;
            stale = old;
        }
    }
    t->spare = spare;
    return stale;
}

/* Validate and publish a version of t. Returns 0 or -ENOEXEC (err says why). */
static int publish(sb_tenant_t *t, const char *src, size_t len, const sandbox_limits_t *lim,
                   char *err, size_t errlen)
{
    sb_version_t *v = calloc(1, sizeof *v);
    char *copy = malloc(len + 1);
    sb_slot_t *spare = calloc(1, sizeof *spare);
    int rc = -ENOMEM, limit = 0;
    sandbox_runner_t *r = NULL;
    if (!v || !copy || !spare)
        goto err;
    memcpy(copy, src, len);
    copy[len] = 0;
    *v = (sb_version_t){1, copy, len, *lim};
    if (v->lim.share_pct <= 0)
        v->lim.share_pct = reg.cfg.share_pct;
    if (v->lim.share_pct > 100)
        v->lim.share_pct = 100;
    r = sandbox_runner_new();
    if (!r)
        goto err;
    if (sb_state_build(r, t->name, v, spare, &limit) < 0) {
        snprintf(err, errlen, "%s", r->err);
        rc = -ENOEXEC;
        goto err;
    }
    sandbox_runner_free(r);
    spare->ver = v;
    v->refs = 2;
    pthread_mutex_lock(&t->lock);
    sb_version_t *old = t->cur;
    sb_slot_t *old_spare = t->spare;
    t->cur = v;
    t->spare = NULL;
    t->reloads++;
    uint64_t gen = __atomic_add_fetch(&reg.gen, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&t->gen, gen, __ATOMIC_RELEASE);
    sb_job_t *stale = deliver(t, v, gen, spare);
    pthread_mutex_unlock(&t->lock);
    sb_version_release(old);
    spare_free(old_spare);
    while (stale) {
        sb_job_t *next = stale->stale;
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

static void unpublish(sb_tenant_t *t)
{
    pthread_mutex_lock(&t->lock);
    sb_version_t *old = t->cur;
    sb_slot_t *old_spare = t->spare;
    t->cur = NULL;
    t->spare = NULL;
    uint64_t gen = __atomic_add_fetch(&reg.gen, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&t->gen, gen, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&t->lock);
    sb_version_release(old);
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
    sb_tenant_t *t = tenant_find(name, n, 1);
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
    sb_tenant_t *t = tenant_find(name, strlen(name), 0);
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
static int load_file(sb_tenant_t *t, const char *dir)
{
    char path[4096], err[SB_ERR_MAX];
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
        fprintf(stderr, "sandbox: tenant %s loaded (mem_kb %d, ms %d)\n", t->name, lim.mem_kb,
                lim.ms);
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
    for (sb_tenant_t *t = reg.list; t; t = t->next)
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
        sb_tenant_t *t = tenant_find(e->d_name, n - 4, 1);
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
    sb_tenant_t *list = reg.list;
    pthread_mutex_unlock(&reg.lock);
    for (sb_tenant_t *t = list; t; t = t->next) {
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
    sb_state_warm_up(reg.cfg.quiet);
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

int sandbox_claim_faults(void)
{
    return sb_snap_claim();
}

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
    sb_tenant_t *t = reg.list;
    reg.list = NULL;
    pthread_mutex_unlock(&reg.lock);
    while (t) {
        sb_tenant_t *next = t->next;
        sb_version_release(t->cur);
        spare_free(t->spare);
        pthread_mutex_destroy(&t->lock);
        free(t);
        t = next;
    }
    reg.ready = 0;
}

/* ---- counters ---- */

static void sum_stats(sb_tenant_t *t, sandbox_stats_t *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&t->lock);
    sb_counts_t all = t->retired;
    for (sb_counts_t *c = t->counts; c; c = c->next) {
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
    sb_tenant_t *t = tenant_find(name, strlen(name), 0);
    pthread_mutex_unlock(&reg.lock);
    if (!t)
        return -ENOENT;
    sum_stats(t, st);
    return 0;
}

/* A tenant's figures for /metrics. */
typedef struct sb_row {
    const char *name;
    sandbox_stats_t st;
} sb_row_t;

/* One metric family: its HELP and TYPE, then a sample per tenant (and per
 * value of the second label, when `label` is given): the text format wants
 * a family's samples together, not a tenant's. */
static void family(buf_t *out, const sb_row_t *rows, size_t n, const char *name, const char *type,
                   const char *help, const char *label, const char *const *vals, int nvals,
                   double (*value)(const sandbox_stats_t *st, int k))
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < (label ? nvals : 1); k++) {
            buf_printf(out, "%s{tenant=\"%s\"", name, rows[i].name);
            if (label)
                buf_printf(out, ",%s=\"%s\"", label, vals[k]);
            double v = value(&rows[i].st, k);
            /* Counts as integers (exact below 2^53), times to the microsecond. */
            buf_printf(out, v == (double)(uint64_t)v ? "} %.0f\n" : "} %.6f\n", v);
        }
}

static double get_requests(const sandbox_stats_t *st, int k)
{
    (void)k;
    return (double)st->requests;
}
static double get_errors(const sandbox_stats_t *st, int k)
{
    return (double)st->outcomes[k + 1]; /* outcome 0 is "ok", not an error */
}
static double get_limits(const sandbox_stats_t *st, int k)
{
    const uint64_t v[] = {st->limit_memory, st->limit_time, st->limit_stack};
    return (double)v[k];
}
static double get_seconds(const sandbox_stats_t *st, int k)
{
    (void)k;
    return st->seconds;
}
static double get_restored(const sandbox_stats_t *st, int k)
{
    (void)k;
    return (double)st->restored_bytes;
}
static double get_reloads(const sandbox_stats_t *st, int k)
{
    (void)k;
    return (double)st->reloads;
}
static double get_reload_errors(const sandbox_stats_t *st, int k)
{
    (void)k;
    return (double)st->reload_errors;
}
static double get_loaded(const sandbox_stats_t *st, int k)
{
    (void)k;
    return st->loaded;
}

void sandbox_metrics(buf_t *out, void *ctx)
{
    static const char *const kinds[SB_OUTCOMES - 1] = {
        "lua_error", "memory", "timeout", "bad_return", "not_loaded", "throttled", "stack"};
    static const char *const limits[] = {"memory", "time", "stack"};
    (void)ctx;
    pthread_mutex_lock(&reg.lock);
    sb_tenant_t *list = reg.list;
    pthread_mutex_unlock(&reg.lock);
    /* Records are only ever added at the head, so the list from here on
     * is stable without the lock. */
    size_t n = 0;
    for (sb_tenant_t *t = list; t; t = t->next)
        n++;
    sb_row_t *rows = calloc(n ? n : 1, sizeof *rows);
    if (!rows)
        n = 0; /* out of memory: the families without their samples */
    size_t i = 0;
    for (sb_tenant_t *t = list; t && rows; t = t->next, i++) {
        rows[i].name = t->name;
        sum_stats(t, &rows[i].st);
    }
    family(out, rows, n, "sandbox_requests_total", "counter", "Requests run in a tenant's sandbox.",
           NULL, NULL, 0, get_requests);
    family(out, rows, n, "sandbox_errors_total", "counter", "Tenant requests that failed, by kind.",
           "kind", kinds, SB_OUTCOMES - 1, get_errors);
    family(out, rows, n, "sandbox_limit_hits_total", "counter",
           "Tenant requests and loads stopped by a sandbox limit, by limit.", "limit", limits, 3,
           get_limits);
    family(out, rows, n, "sandbox_seconds_total", "counter",
           "Seconds spent in a tenant's sandboxes (restore, reseed, call).", NULL, NULL, 0,
           get_seconds);
    family(out, rows, n, "sandbox_restored_bytes_total", "counter",
           "Bytes of a tenant's snapshot copied back to make fresh sandboxes.", NULL, NULL, 0,
           get_restored);
    family(out, rows, n, "sandbox_reloads_total", "counter", "Versions of a tenant's code loaded.",
           NULL, NULL, 0, get_reloads);
    family(out, rows, n, "sandbox_reload_errors_total", "counter",
           "Versions of a tenant's code that failed to load.", NULL, NULL, 0, get_reload_errors);
    family(out, rows, n, "sandbox_tenant_loaded", "gauge",
           "1 when a version of the tenant's code is loaded and serving, else 0.", NULL, NULL, 0,
           get_loaded);
    free(rows);
}
