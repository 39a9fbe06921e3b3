#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/net.h"
#include "core/timer.h"
#include "engine_io.h"

const char *const lg_err_names[LG_ERR_N] = {
    "connect", "read", "write", "timeout", "closed", "mismatch", "status_4xx", "status_5xx",
};

#define IN_CAP      16384                   /* read buffer per connection */
#define IN_MAX      (HTTP_MAX_BODY + 65536) /* a chunked body must fit whole */
#define RETRY_MS    50                      /* pause before reconnecting after a connect error */
#define SPIN_US     100                     /* -R: poll this close to a send time */
#define MAX_WAIT_US 100000                  /* wake up at least this often (SIGINT, progress) */

/* The engine's own names for the types engine_io.h shares with the backends. */
typedef lg_slot_t slot_t;
typedef lg_conn_t conn_t;
typedef lg_loop_t loop_t;

static inline uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: fast, good enough for picking keys and mix entries. */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

#define conn_of(node, field) ((conn_t *)((char *)(node)-offsetof(conn_t, field)))

/* ---- statistics ---- */

/* Move the current second's latencies into its slot. A failed allocation
 * loses them (the counts were already in the slot). */
static void sec_flush(lg_thread_t *th)
{
    if (th->cur_sec < 0 || persec_grow(&th->st.secs, (size_t)th->cur_sec + 1) < 0)
        return;
    const lg_sec_t *sec = &th->st.secs.v[th->cur_sec];
    (void)persec_add_hist(&th->st.secs.v[th->cur_sec], &th->sec_hist);
    if (th->run->publish) {
        /* Once a second: the lock is never in the way of a request. */
        struct engine_pub *p = &th->pub[th->cur_sec % ENGINE_PUB_SLOTS];
        pthread_mutex_lock(&th->pub_mu);
        if (p->sec != th->cur_sec) {
            /* What an older second left here was published without it
             * (the main thread gave up waiting): never count it twice. */
            hist_reset(&p->lat);
            p->requests = p->errors = 0;
        }
        p->sec = th->cur_sec;
        hist_merge(&p->lat, &th->sec_hist);
        p->requests += sec->requests;
        p->errors += sec->errors;
        pthread_mutex_unlock(&th->pub_mu);
    }
    hist_reset(&th->sec_hist);
}

void engine_pub_init(lg_thread_t *th)
{
    pthread_mutex_init(&th->pub_mu, NULL);
    for (int i = 0; i < ENGINE_PUB_SLOTS; i++) {
        th->pub[i].sec = -1;
        hist_reset(&th->pub[i].lat);
        th->pub[i].requests = th->pub[i].errors = 0;
    }
    atomic_store(&th->pub_done, -1);
}

void engine_take_published(lg_thread_t *th, int64_t sec, hist_t *h, uint64_t *requests,
                           uint64_t *errors)
{
    struct engine_pub *p = &th->pub[sec % ENGINE_PUB_SLOTS];
    pthread_mutex_lock(&th->pub_mu);
    if (p->sec == sec) {
        hist_merge(h, &p->lat);
        *requests += p->requests;
        *errors += p->errors;
    }
    if (p->sec >= 0 && p->sec <= sec) {
        hist_reset(&p->lat);
        p->requests = p->errors = 0;
        p->sec = -1;
    }
    pthread_mutex_unlock(&th->pub_mu);
}

/* The per-second slot for time `now`; returns NULL outside the window. */
static lg_sec_t *sec_at(loop_t *l, int64_t now)
{
    lg_thread_t *th = l->th;
    if (now < l->run->window_us || now >= l->run->end_us)
        return NULL;
    int64_t s = (now - l->run->window_us) / 1000000;
    if (s != th->cur_sec) {
        sec_flush(th);
        th->cur_sec = s;
        atomic_store_explicit(&th->pub_done, s - 1, memory_order_release);
    }
    if (persec_grow(&th->st.secs, (size_t)s + 1) < 0)
        return NULL;
    return &th->st.secs.v[s];
}

/* Count an error of class cls, if now is in the window. Returns whether it
 * was counted. */
static int count_error(loop_t *l, int cls, const char *text)
{
    lg_stats_t *st = &l->th->st;
    lg_sec_t *sec = sec_at(l, l->now);
    if (!sec)
        return 0; /* warm-up, or the drain after the end */
    st->errors[cls]++;
    if (sec)
        sec->errors++;
    if (st->first[cls][0] == '\0') {
        snprintf(st->first[cls], LG_ERR_TEXT, "%s", text);
        st->first_us[cls] = l->now;
    }
    return 1;
}

/* A response arrived for slot s with verdict `outcome`. */
static void complete(loop_t *l, const slot_t *s, int outcome, int status)
{
    lg_stats_t *st = &l->th->st;
    if (l->w->incr_keys) {
        if (outcome == CHECK_OK) {
            st->acked[s->key] += s->value;
            st->acked_requests++;
        } else {
            st->unacked[s->key] += s->value;
            st->unacked_requests++;
        }
    }
    lg_sec_t *sec = sec_at(l, l->now);
    if (!sec)
        return;
    if (outcome == CHECK_OK) {
        uint64_t lat = (uint64_t)(l->now - s->intended_us);
        hist_record(&st->lat, lat);
        hist_record(&l->th->sec_hist, lat);
        if (l->o->rate > 0)
            hist_record(&st->unc, (uint64_t)(l->now - s->sent_us));
        st->requests++;
        sec->requests++;
        return;
    }
    static const int cls[] = {
        [CHECK_MISMATCH] = LG_ERR_MISMATCH,
        [CHECK_4XX] = LG_ERR_4XX,
        [CHECK_5XX] = LG_ERR_5XX,
    };
    char text[64];
    if (outcome != CHECK_MISMATCH)
        snprintf(text, sizeof text, "HTTP status %d", status);
    count_error(l, cls[outcome], outcome == CHECK_MISMATCH ? "wrong answer" : text);
}

/* ---- connections ---- */

static void conn_connect(loop_t *l, conn_t *c);

/* Close c, counting one error of class cls (-1: none) with text, and replace
 * it unless the run is ending. Requests still in flight are lost: in
 * increment mode their values go to the unacknowledged sums. */
static void conn_close(loop_t *l, conn_t *c, int cls, const char *text)
{
    lg_stats_t *st = &l->th->st;
    int counted = cls >= 0 && count_error(l, cls, text);
    /* The run is ending: what is still in flight (cut off by the end, or
     * timed out past the window, where no error counts) is reported apart
     * (lg_stats_t.unfinished), so that no request vanishes unreported. */
    int ending = !counted && (l->stopping || l->now >= l->run->end_us);
    for (unsigned i = 0; i < c->count; i++) {
        const slot_t *s = &c->ring[(c->head + i) % l->o->pipeline];
        if (ending) {
            st->unfinished++;
            if (l->now - s->intended_us > st->unfinished_oldest_us)
                st->unfinished_oldest_us = l->now - s->intended_us;
        }
        if (l->w->incr_keys) {
            st->unacked[s->key] += s->value;
            st->unacked_requests++;
        }
    }
    if (c->fd >= 0) {
        l->be->forget(l, c);
        close(c->fd);
    }
    c->fd = -1;
    c->gen++;
    c->count = 0;
    c->head = 0;
    c->out_off = c->out_len = 0;
    c->in.off = c->in.len = 0;
    check_reset(&c->ck);
    (void)timers_set(&l->tmo, &c->tmo, 0);
    c->state = C_IDLE;
    if (l->stopping) {
        c->state = C_DONE;
        return;
    }
    if (cls == LG_ERR_CONNECT) {
        /* Do not spin on a server that refuses: try again shortly. */
        (void)timers_set(&l->pace, &c->pace, l->now + RETRY_MS * 1000);
        if (l->th->quota)
            l->issued++; /* a failed connect uses up quota, so -n always ends */
        return;
    }
    conn_connect(l, c);
}

static void conn_connect(loop_t *l, conn_t *c)
{
    const lg_run_t *run = l->run;
    int fd = net_connect((const struct sockaddr *)&run->addr, run->addrlen, NULL, 0, NET_NONBLOCK);
    if (fd < 0) {
        char text[LG_ERR_TEXT];
        snprintf(text, sizeof text, "connect: %s", strerror(-fd));
        c->fd = -1;
        conn_close(l, c, LG_ERR_CONNECT, text);
        return;
    }
    c->fd = fd;
    c->state = C_CONNECTING;
    int rc = l->be->watch(l, c);
    if (rc < 0) {
        char text[LG_ERR_TEXT];
        snprintf(text, sizeof text, "%s: %s", l->be->name, strerror(-rc));
        conn_close(l, c, LG_ERR_CONNECT, text);
        return;
    }
    (void)timers_set(&l->tmo, &c->tmo, time_now_ms() + l->o->timeout_ms);
}

void engine_failed(loop_t *l, conn_t *c, int cls, int err)
{
    char text[LG_ERR_TEXT];
    snprintf(text, sizeof text, "%s: %s", cls == LG_ERR_WRITE ? "write" : "read", strerror(err));
    conn_close(l, c, cls, text);
}

int engine_pump(loop_t *l, conn_t *c)
{
    const lg_workload_t *w = l->w;
    unsigned depth = l->o->pipeline;
    int added = 0;
    if (c->out_off > 0 && !c->pinned) {
        /* Bytes already written still sit at the front while the rest of a
         * partial write waits: make room, or the buffer would overflow. */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    while (c->count < depth && !l->stopping) {
        if (l->th->quota && l->issued >= l->th->quota)
            break;
        /* A send in flight pins what it reads: new requests go after it,
         * and wait for the next pump when there is no room left. */
        if (c->out_len + w->max_len > l->out_cap)
            break;
        int64_t intended = l->now;
        if (l->o->rate > 0) {
            if (c->next_us > (double)l->now) {
                /* Round up: a fractional deadline truncated down to `now`
                 * would be due at once, and the pace loop would never end. */
                (void)timers_set(&l->pace, &c->pace, (int64_t)c->next_us + 1);
                break;
            }
            intended = (int64_t)c->next_us;
            c->next_us += l->interval_us;
        }
        slot_t *s = &c->ring[(c->head + c->count) % depth];
        s->intended_us = intended;
        s->sent_us = l->now;
        if (w->incr_keys) {
            uint64_t r = rng_next(&l->rng);
            s->variant = 0;
            s->key = (uint32_t)(r % w->incr_keys);
            if (w->incr_positive)
                s->value = (int32_t)((r >> 32) % (uint64_t)(w->incr_max ? w->incr_max : 1)) + 1;
            else
                s->value = (int32_t)((r >> 32) % (2 * (uint64_t)w->incr_max + 1)) - w->incr_max;
            c->out_len += workload_increment(w, c->out + c->out_len, s->key, s->value);
        } else {
            unsigned v = workload_pick(w, c->issued, w->random_pick ? rng_next(&l->rng) : 0);
            s->variant = v;
            memcpy(c->out + c->out_len, w->v[v].bytes, w->v[v].len);
            c->out_len += w->v[v].len;
        }
        if (c->count == 0)
            (void)timers_set(&l->tmo, &c->tmo, s->sent_us / 1000 + l->o->timeout_ms);
        c->count++;
        c->issued++;
        l->issued++;
        added = 1;
    }
    if (added)
        return l->be->flush(l, c);
    return 0;
}

static const check_expect_t *expect_of(loop_t *l, const slot_t *s)
{
    return l->w->incr_keys ? &l->w->incr_expect : &l->w->v[s->variant].expect;
}

void engine_eof(loop_t *l, conn_t *c, int err)
{
    if (err) {
        engine_failed(l, c, LG_ERR_READ, err);
        return;
    }
    if (c->count > 0 && check_eof(&c->ck)) {
        /* A body delimited by the close is complete now. */
        complete(l, &c->ring[c->head], c->ck.outcome, c->ck.status);
        c->head = (c->head + 1) % l->o->pipeline;
        c->count--;
    }
    if (c->count > 0 || buf_used(&c->in) > 0)
        conn_close(l, c, LG_ERR_CLOSED, "connection closed by the server with a request in flight");
    else
        conn_close(l, c, -1, NULL);
}

int engine_in_room(loop_t *l, conn_t *c, size_t want)
{
    if (buf_room(&c->in) < want && buf_reserve(&c->in, want, IN_MAX) < 0) {
        conn_close(l, c, LG_ERR_READ, "response too large for the read buffer");
        return -1;
    }
    return 0;
}

void engine_received(loop_t *l, conn_t *c, size_t n)
{
    unsigned depth = l->o->pipeline;
    c->in.len += n;
    l->now = time_now_us();

    int close_after = 0;
    while (c->count > 0 && buf_used(&c->in) > 0) {
        slot_t *s = &c->ring[c->head];
        int done;
        int r = check_response(&c->ck, expect_of(l, s), buf_head(&c->in), buf_used(&c->in), &done);
        if (r < 0) {
            conn_close(l, c, LG_ERR_MISMATCH, "unparsable response");
            return;
        }
        buf_consume(&c->in, (size_t)r);
        if (!done) {
            if (r == 0)
                break;
            continue;
        }
        close_after = c->ck.close;
        int outcome = c->ck.outcome, status = c->ck.status;
        check_reset(&c->ck);
        complete(l, s, outcome, status);
        c->head = c->head + 1 == depth ? 0 : c->head + 1;
        c->count--;
        if (close_after)
            break;
    }
    if (close_after) {
        conn_close(l, c, -1, NULL);
        return;
    }
    if (c->count == 0 && buf_used(&c->in) > 0) {
        conn_close(l, c, LG_ERR_MISMATCH, "data from the server with no request in flight");
        return;
    }
    if (c->count > 0)
        (void)timers_set(&l->tmo, &c->tmo, c->ring[c->head].sent_us / 1000 + l->o->timeout_ms);
    engine_pump(l, c);
}

void engine_connected(loop_t *l, conn_t *c, int err)
{
    if (err < 0) {
        char text[LG_ERR_TEXT];
        snprintf(text, sizeof text, "connect: %s", strerror(-err));
        conn_close(l, c, LG_ERR_CONNECT, text);
        return;
    }
    c->state = C_OPEN;
    (void)timers_set(&l->tmo, &c->tmo, 0);
    if (l->o->rate > 0 && c->next_us < (double)l->run->start_us)
        c->next_us = (double)l->run->start_us;
    engine_pump(l, c);
}

/* The oldest request's timeout (or the connect timeout) may have passed. */
static void conn_timeout(loop_t *l, conn_t *c)
{
    char text[LG_ERR_TEXT];
    if (c->state == C_CONNECTING) {
        snprintf(text, sizeof text, "connect: no answer in %lld ms", (long long)l->o->timeout_ms);
        conn_close(l, c, LG_ERR_CONNECT, text);
        return;
    }
    if (c->state != C_OPEN || c->count == 0)
        return;
    int64_t due = c->ring[c->head].sent_us / 1000 + l->o->timeout_ms;
    if (due > time_now_ms()) {
        (void)timers_set(&l->tmo, &c->tmo, due);
        return;
    }
    snprintf(text, sizeof text, "no response in %lld ms", (long long)l->o->timeout_ms);
    conn_close(l, c, LG_ERR_TIMEOUT, text);
}

/* ---- the loop ---- */

static int all_quiet(loop_t *l)
{
    for (unsigned i = 0; i < l->th->nconns; i++) {
        conn_t *c = &l->conns[i];
        if (c->state == C_CONNECTING || (c->state == C_OPEN && (c->count > 0 || c->out_len)))
            return 0;
    }
    return 1;
}

static int loop_init(loop_t *l, lg_thread_t *th)
{
    const lg_run_t *run = th->run;
    memset(l, 0, sizeof *l);
    l->th = th;
    l->run = run;
    l->o = run->o;
    l->w = run->w;
    l->be = run->backend ? run->backend : &engine_epoll;
    l->rng = run->o->seed * 0x9E3779B97F4A7C15ULL + th->id + 1;
    if (l->rng == 0)
        l->rng = 1;
    th->cur_sec = -1;
    if (l->o->rate > 0)
        l->interval_us = 1e6 * l->o->connections / l->o->rate;
    l->conns = calloc(th->nconns, sizeof *l->conns);
    /* Each connection files at most one node in each heap: with room for
     * all of them, no timers_set below can fail (and lose a timeout). */
    if (!l->conns || timers_reserve(&l->tmo, th->nconns) < 0 ||
        timers_reserve(&l->pace, th->nconns) < 0)
        return -ENOMEM;
    if (l->w->incr_keys) {
        th->st.acked = calloc(l->w->incr_keys, sizeof(int64_t));
        th->st.unacked = calloc(l->w->incr_keys, sizeof(int64_t));
        if (!th->st.acked || !th->st.unacked)
            return -ENOMEM;
    }
    /* A pipeline's worth of requests, twice: while a send in flight pins the
     * first (engine_uring.c), answers to its front can free slots for more. */
    l->out_cap = 2 * (size_t)l->o->pipeline * l->w->max_len + 64;
    for (unsigned i = 0; i < th->nconns; i++) {
        conn_t *c = &l->conns[i];
        c->fd = -1;
        c->out = malloc(l->out_cap);
        c->ring = calloc(l->o->pipeline, sizeof *c->ring);
        if (!c->out || !c->ring || buf_reserve(&c->in, IN_CAP, IN_MAX) < 0)
            return -ENOMEM;
        /* -R: stagger the connections' schedules evenly over one interval. */
        c->next_us =
            (double)run->start_us + l->interval_us * (th->first_conn + i) / l->o->connections;
    }
    return l->be->init(l);
}

static void loop_free(loop_t *l)
{
    for (unsigned i = 0; l->conns && i < l->th->nconns; i++) {
        conn_t *c = &l->conns[i];
        if (c->fd >= 0)
            close(c->fd);
    }
    /* The backend's requests end with its state, before the buffers they
     * point into are freed. */
    if (l->be)
        l->be->free(l);
    for (unsigned i = 0; l->conns && i < l->th->nconns; i++) {
        conn_t *c = &l->conns[i];
        buf_free(&c->in);
        free(c->out);
        free(c->ring);
    }
    free(l->conns);
    timers_free(&l->tmo);
    timers_free(&l->pace);
}

/* Microseconds the backend may sleep for, to wake up by `until_us`: -R
 * schedules need better than milliseconds. */
static int64_t wait_budget(loop_t *l, int64_t until_us)
{
    int64_t d = until_us - time_now_us();
    if (d < 0)
        d = 0;
    /* Waking up from a sleep takes tens of microseconds on most machines: an
     * -R schedule sleeps until shortly before its next send and polls the
     * rest of the way, so the send is on time. */
    if (l->o->rate > 0)
        d = d > SPIN_US ? d - SPIN_US : 0;
    return d;
}

void *engine_thread(void *arg)
{
    lg_thread_t *th = arg;
    const lg_run_t *run = th->run;
    loop_t l;
    int drain = run->w->incr_keys > 0; /* increment sums must be exact: wait for answers */

    if ((th->rc = loop_init(&l, th)) < 0)
        goto out;
    /* -R: the kernel's default 50 us timer slack would show up as latency
     * measured from the intended send time. */
    if (run->o->rate > 0)
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    l.now = time_now_us();
    time_update();
    for (unsigned i = 0; i < th->nconns; i++)
        conn_connect(&l, &l.conns[i]);

    int64_t drain_until = 0;
    for (;;) {
        int stop = atomic_load_explicit(&run->stop, memory_order_relaxed);
        if (!l.stopping && (l.now >= run->end_us || stop || (th->quota && l.issued >= th->quota))) {
            l.stopping = 1;
            drain_until = l.now + l.o->timeout_ms * 1000 + 100000;
            if (l.now >= run->end_us) {
                /* Past the window nothing counts any more (sec_at): the last
                 * second is complete now, not at the end of the drain. */
                sec_flush(th);
                th->cur_sec = -1;
                atomic_store_explicit(&th->pub_done, INT64_MAX, memory_order_release);
            }
        }
        if (l.stopping) {
            if (stop || all_quiet(&l) || l.now >= drain_until)
                break;
            if (!drain && !th->quota)
                break;
        }
        int64_t until = l.now + MAX_WAIT_US;
        if (!l.stopping && run->end_us < until)
            until = run->end_us;
        int t = timers_timeout(&l.tmo, time_now_ms());
        if (t >= 0 && l.now + (int64_t)t * 1000 < until)
            until = l.now + (int64_t)t * 1000;
        if (l.pace.n > 0 && l.pace.heap[0]->when < until)
            until = l.pace.heap[0]->when;
        if ((th->rc = l.be->wait(&l, wait_budget(&l, until))) < 0)
            break;
        l.now = time_now_us();
        time_update();
        timer_node_t *node;
        while ((node = timers_expired(&l.tmo, time_now_ms())) != NULL)
            conn_timeout(&l, conn_of(node, tmo));
        while ((node = timers_expired(&l.pace, l.now)) != NULL) {
            conn_t *c = conn_of(node, pace);
            if (c->state == C_IDLE)
                conn_connect(&l, c); /* the pause after a connect error is over */
            else if (c->state == C_OPEN)
                engine_pump(&l, c);
        }
        /* Watched live: finish a second when it ends, not at the next answer,
         * so that a stalled server's second is published on time. */
        if (run->publish)
            (void)sec_at(&l, l.now);
        atomic_store_explicit(&th->live_requests, th->st.requests, memory_order_relaxed);
        uint64_t e = 0;
        for (int k = 0; k < LG_ERR_N; k++)
            e += th->st.errors[k];
        atomic_store_explicit(&th->live_errors, e, memory_order_relaxed);
    }
    th->st.finish_us = l.now;
    sec_flush(th);
    th->cur_sec = -1;
    /* Requests still in flight at the end are not answers; in increment mode
     * their values may or may not have been applied. */
    l.stopping = 1;
    for (unsigned i = 0; i < th->nconns; i++)
        if (l.conns[i].fd >= 0)
            conn_close(&l, &l.conns[i], -1, NULL);
out:
    atomic_store_explicit(&th->pub_done, INT64_MAX, memory_order_release);
    loop_free(&l);
    return NULL;
}

/* ---- merging ---- */

int engine_stats_merge(lg_stats_t *dst, const lg_stats_t *src, unsigned keys)
{
    hist_merge(&dst->lat, &src->lat);
    hist_merge(&dst->unc, &src->unc);
    dst->requests += src->requests;
    for (int k = 0; k < LG_ERR_N; k++) {
        dst->errors[k] += src->errors[k];
        if (src->first[k][0] && (!dst->first[k][0] || src->first_us[k] < dst->first_us[k])) {
            memcpy(dst->first[k], src->first[k], LG_ERR_TEXT);
            dst->first_us[k] = src->first_us[k];
        }
    }
    if (persec_merge(&dst->secs, &src->secs) < 0)
        return -ENOMEM;
    if (keys && src->acked) {
        if (!dst->acked) {
            dst->acked = calloc(keys, sizeof(int64_t));
            dst->unacked = calloc(keys, sizeof(int64_t));
            if (!dst->acked || !dst->unacked)
                return -ENOMEM;
        }
        for (unsigned k = 0; k < keys; k++) {
            dst->acked[k] += src->acked[k];
            dst->unacked[k] += src->unacked[k];
        }
        dst->acked_requests += src->acked_requests;
        dst->unacked_requests += src->unacked_requests;
    }
    if (src->finish_us > dst->finish_us)
        dst->finish_us = src->finish_us;
    dst->unfinished += src->unfinished;
    if (src->unfinished_oldest_us > dst->unfinished_oldest_us)
        dst->unfinished_oldest_us = src->unfinished_oldest_us;
    return 0;
}

void engine_stats_free(lg_stats_t *st)
{
    persec_free(&st->secs);
    free(st->acked);
    free(st->unacked);
    st->acked = st->unacked = NULL;
}
