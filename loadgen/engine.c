#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/net.h"
#include "core/timer.h"

const char *const lg_err_names[LG_ERR_N] = {
    "connect", "read", "write", "timeout", "closed", "mismatch", "status_4xx", "status_5xx",
};

#define IN_CAP       16384              /* read buffer per connection */
#define IN_MAX       (HTTP_MAX_BODY + 65536) /* a chunked body must fit whole */
#define RETRY_MS     50                 /* pause before reconnecting after a connect error */
#define SPIN_US      100                /* -R: poll this close to a send time */
#define MAX_WAIT_US  100000             /* wake up at least this often (SIGINT, progress) */

enum { C_IDLE, C_CONNECTING, C_OPEN, C_DONE };

/* One request in flight. */
typedef struct slot {
    int64_t intended_us; /* when it should have been sent (-R), else when it was */
    int64_t sent_us;
    uint32_t variant;
    uint32_t key;        /* increment mode */
    int32_t value;
} slot_t;

typedef struct conn {
    int fd;
    int state;
    unsigned armed;      /* epoll events registered */
    buf_t in;
    char *out;           /* requests waiting to be written: out[out_off..out_len) */
    size_t out_off, out_len;
    slot_t *ring;        /* in flight, oldest at head */
    unsigned head, count;
    check_state_t ck;
    timer_node_t tmo;    /* ms: the oldest request's timeout, or the connect timeout */
    timer_node_t pace;   /* us: the next intended send (-R), or a reconnect pause */
    uint64_t issued;     /* requests this connection has sent */
    double next_us;      /* -R: intended time of the next request */
} conn_t;

typedef struct loop {
    lg_thread_t *th;
    const lg_run_t *run;
    const lg_opts_t *o;
    const lg_workload_t *w;
    int ep;
    conn_t *conns;
    timers_t tmo;         /* ms deadlines (core timers) */
    timers_t pace;        /* us deadlines, same structure */
    uint64_t rng;
    uint64_t issued;      /* toward the -n quota */
    int stopping;         /* no new requests */
    int64_t now;          /* us, read after each wake-up and each read */
    double interval_us;   /* -R: time between requests of one connection */
} loop_t;

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

#define conn_of(node, field) ((conn_t *)((char *)(node) - offsetof(conn_t, field)))

/* ---- statistics ---- */

static void sec_flush(lg_thread_t *th)
{
    lg_stats_t *st = &th->st;
    if (th->cur_sec < 0)
        return;
    size_t need = (size_t)th->cur_sec + 1;
    if (need > st->nsecs) {
        lg_sec_t *s = realloc(st->secs, need * sizeof *s);
        if (!s)
            return;
        memset(s + st->nsecs, 0, (need - st->nsecs) * sizeof *s);
        st->secs = s;
        st->nsecs = need;
    }
    lg_sec_t *sec = &st->secs[th->cur_sec];
    hist_t *h = &th->sec_hist;
    if (h->count > 0) {
        uint32_t n = 0;
        for (unsigned i = 0; i < HIST_BUCKETS; i++)
            n += h->counts[i] != 0;
        uint32_t *p = realloc(sec->pairs, 2 * (size_t)(sec->n + n) * sizeof *p);
        if (p) {
            /* A second is flushed once, unless a thread's clock went back;
             * append and let the merge combine duplicates. */
            uint32_t k = sec->n;
            for (unsigned i = 0; i < HIST_BUCKETS; i++)
                if (h->counts[i]) {
                    p[2 * k] = i;
                    p[2 * k + 1] = (uint32_t)h->counts[i];
                    k++;
                }
            sec->pairs = p;
            sec->n = k;
        }
        hist_reset(h);
    }
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
        lg_stats_t *st = &th->st;
        if ((size_t)s >= st->nsecs) {
            size_t need = (size_t)s + 1;
            lg_sec_t *p = realloc(st->secs, need * sizeof *p);
            if (!p)
                return NULL;
            memset(p + st->nsecs, 0, (need - st->nsecs) * sizeof *p);
            st->secs = p;
            st->nsecs = need;
        }
    }
    return &th->st.secs[s];
}

static void count_error(loop_t *l, int cls, const char *text)
{
    lg_stats_t *st = &l->th->st;
    lg_sec_t *sec = sec_at(l, l->now);
    if (!sec)
        return; /* warm-up, or the drain after the end */
    st->errors[cls]++;
    if (sec)
        sec->errors++;
    if (st->first[cls][0] == '\0') {
        snprintf(st->first[cls], LG_ERR_TEXT, "%s", text);
        st->first_us[cls] = l->now;
    }
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

static void arm(loop_t *l, conn_t *c, unsigned ev)
{
    if (ev == c->armed)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(l->ep, c->armed ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e);
    c->armed = ev;
}

/* Close c, counting one error of class cls (-1: none) with text, and replace
 * it unless the run is ending. Requests still in flight are lost: in
 * increment mode their values go to the unacknowledged sums. */
static void conn_close(loop_t *l, conn_t *c, int cls, const char *text)
{
    if (cls >= 0)
        count_error(l, cls, text);
    if (l->w->incr_keys) {
        lg_stats_t *st = &l->th->st;
        for (unsigned i = 0; i < c->count; i++) {
            const slot_t *s = &c->ring[(c->head + i) % l->o->pipeline];
            st->unacked[s->key] += s->value;
            st->unacked_requests++;
        }
    }
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->armed = 0;
    c->count = 0;
    c->head = 0;
    c->out_off = c->out_len = 0;
    c->in.off = c->in.len = 0;
    check_reset(&c->ck);
    timers_set(&l->tmo, &c->tmo, 0);
    c->state = C_IDLE;
    if (l->stopping) {
        c->state = C_DONE;
        return;
    }
    if (cls == LG_ERR_CONNECT) {
        /* Do not spin on a server that refuses: try again shortly. */
        timers_set(&l->pace, &c->pace, l->now + RETRY_MS * 1000);
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
    arm(l, c, EPOLLOUT);
    timers_set(&l->tmo, &c->tmo, time_now_ms() + l->o->timeout_ms);
}

/* Write what is waiting. Returns 0, or -1 when c was closed. */
static int conn_flush(loop_t *l, conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            char text[LG_ERR_TEXT];
            snprintf(text, sizeof text, "write: %s", strerror(errno));
            conn_close(l, c, LG_ERR_WRITE, text);
            return -1;
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        arm(l, c, EPOLLIN);
    } else {
        arm(l, c, EPOLLIN | EPOLLOUT);
    }
    return 0;
}

/* Queue as many requests as the pipeline, the schedule and the quota allow,
 * then write them with one write. Returns 0, or -1 when c was closed. */
static int conn_pump(loop_t *l, conn_t *c)
{
    const lg_workload_t *w = l->w;
    unsigned depth = l->o->pipeline;
    int added = 0;
    if (c->out_off > 0) {
        /* Bytes already written still sit at the front while the rest of a
         * partial write waits: make room, or the buffer would overflow. */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    while (c->count < depth && !l->stopping) {
        if (l->th->quota && l->issued >= l->th->quota)
            break;
        int64_t intended = l->now;
        if (l->o->rate > 0) {
            if (c->next_us > (double)l->now) {
                /* Round up: a fractional deadline truncated down to `now`
                 * would be due at once, and the pace loop would never end. */
                timers_set(&l->pace, &c->pace, (int64_t)c->next_us + 1);
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
            s->value = (int32_t)((r >> 32) % (2 * (uint64_t)w->incr_max + 1)) - w->incr_max;
            c->out_len += workload_increment(w, c->out + c->out_len, s->key, s->value);
        } else {
            unsigned v = workload_pick(w, c->issued, w->random_pick ? rng_next(&l->rng) : 0);
            s->variant = v;
            memcpy(c->out + c->out_len, w->v[v].bytes, w->v[v].len);
            c->out_len += w->v[v].len;
        }
        if (c->count == 0)
            timers_set(&l->tmo, &c->tmo, s->sent_us / 1000 + l->o->timeout_ms);
        c->count++;
        c->issued++;
        l->issued++;
        added = 1;
    }
    if (added)
        return conn_flush(l, c);
    return 0;
}

static const check_expect_t *expect_of(loop_t *l, const slot_t *s)
{
    return l->w->incr_keys ? &l->w->incr_expect : &l->w->v[s->variant].expect;
}

/* Peer closed, or read failed. */
static void conn_eof(loop_t *l, conn_t *c, int err)
{
    char text[LG_ERR_TEXT];
    if (err) {
        snprintf(text, sizeof text, "read: %s", strerror(err));
        conn_close(l, c, LG_ERR_READ, text);
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

static void conn_readable(loop_t *l, conn_t *c)
{
    unsigned depth = l->o->pipeline;
    if (buf_room(&c->in) < 4096 && buf_reserve(&c->in, 4096, IN_MAX) < 0) {
        conn_close(l, c, LG_ERR_READ, "response too large for the read buffer");
        return;
    }
    ssize_t n = read(c->fd, c->in.data + c->in.len, buf_room(&c->in));
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        conn_eof(l, c, n < 0 ? errno : 0);
        return;
    }
    c->in.len += (size_t)n;
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
        timers_set(&l->tmo, &c->tmo, c->ring[c->head].sent_us / 1000 + l->o->timeout_ms);
    conn_pump(l, c);
}

static void conn_event(loop_t *l, conn_t *c, unsigned ev)
{
    if (c->state == C_CONNECTING) {
        int rc = net_connect_result(c->fd);
        if (rc < 0) {
            char text[LG_ERR_TEXT];
            snprintf(text, sizeof text, "connect: %s", strerror(-rc));
            conn_close(l, c, LG_ERR_CONNECT, text);
            return;
        }
        c->state = C_OPEN;
        timers_set(&l->tmo, &c->tmo, 0);
        arm(l, c, EPOLLIN);
        if (l->o->rate > 0 && c->next_us < (double)l->run->start_us)
            c->next_us = (double)l->run->start_us;
        conn_pump(l, c);
        return;
    }
    if (c->state != C_OPEN)
        return;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        conn_readable(l, c);
        if (c->state != C_OPEN || c->fd < 0)
            return;
    }
    if ((ev & EPOLLOUT) && c->out_off < c->out_len)
        conn_flush(l, c);
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
        timers_set(&l->tmo, &c->tmo, due);
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
    l->rng = run->o->seed * 0x9E3779B97F4A7C15ULL + th->id + 1;
    if (l->rng == 0)
        l->rng = 1;
    th->cur_sec = -1;
    if (l->o->rate > 0)
        l->interval_us = 1e6 * l->o->connections / l->o->rate;
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->conns = calloc(th->nconns, sizeof *l->conns);
    if (l->ep < 0 || !l->conns)
        return -ENOMEM;
    if (l->w->incr_keys) {
        th->st.acked = calloc(l->w->incr_keys, sizeof(int64_t));
        th->st.unacked = calloc(l->w->incr_keys, sizeof(int64_t));
        if (!th->st.acked || !th->st.unacked)
            return -ENOMEM;
    }
    size_t out_cap = (size_t)l->o->pipeline * l->w->max_len + 64;
    for (unsigned i = 0; i < th->nconns; i++) {
        conn_t *c = &l->conns[i];
        c->fd = -1;
        c->out = malloc(out_cap);
        c->ring = calloc(l->o->pipeline, sizeof *c->ring);
        if (!c->out || !c->ring || buf_reserve(&c->in, IN_CAP, IN_MAX) < 0)
            return -ENOMEM;
        /* -R: stagger the connections' schedules evenly over one interval. */
        c->next_us = (double)run->start_us + l->interval_us * (th->first_conn + i) / l->o->connections;
    }
    return 0;
}

static void loop_free(loop_t *l)
{
    for (unsigned i = 0; l->conns && i < l->th->nconns; i++) {
        conn_t *c = &l->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        buf_free(&c->in);
        free(c->out);
        free(c->ring);
    }
    free(l->conns);
    timers_free(&l->tmo);
    timers_free(&l->pace);
    if (l->ep >= 0)
        close(l->ep);
}

/* Wait for events until `until_us` at the latest, with microsecond
 * precision: -R schedules need better than epoll_wait's milliseconds. */
static int wait_events(loop_t *l, struct epoll_event *evs, int max, int64_t until_us)
{
    int64_t d = until_us - time_now_us();
    if (d < 0)
        d = 0;
    /* Waking up from a sleep takes tens of microseconds on most machines: an
     * -R schedule sleeps until shortly before its next send and polls the
     * rest of the way, so the send is on time. */
    if (l->o->rate > 0)
        d = d > SPIN_US ? d - SPIN_US : 0;
    struct timespec ts = {.tv_sec = d / 1000000, .tv_nsec = (d % 1000000) * 1000};
    int n = epoll_pwait2(l->ep, evs, max, &ts, NULL);
    if (n < 0 && errno == ENOSYS)
        n = epoll_wait(l->ep, evs, max, (int)((d + 999) / 1000));
    return n;
}

void *engine_thread(void *arg)
{
    lg_thread_t *th = arg;
    const lg_run_t *run = th->run;
    loop_t l;
    struct epoll_event evs[256];
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
        if (!l.stopping && (l.now >= run->end_us || stop ||
                            (th->quota && l.issued >= th->quota))) {
            l.stopping = 1;
            drain_until = l.now + l.o->timeout_ms * 1000 + 100000;
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
        int n = wait_events(&l, evs, 256, until);
        l.now = time_now_us();
        time_update();
        for (int i = 0; i < n; i++)
            conn_event(&l, evs[i].data.ptr, evs[i].events);
        timer_node_t *node;
        while ((node = timers_expired(&l.tmo, time_now_ms())) != NULL)
            conn_timeout(&l, conn_of(node, tmo));
        while ((node = timers_expired(&l.pace, l.now)) != NULL) {
            conn_t *c = conn_of(node, pace);
            if (c->state == C_IDLE)
                conn_connect(&l, c); /* the pause after a connect error is over */
            else if (c->state == C_OPEN)
                conn_pump(&l, c);
        }
        atomic_store_explicit(&th->live_requests, th->st.requests, memory_order_relaxed);
        uint64_t e = 0;
        for (int k = 0; k < LG_ERR_N; k++)
            e += th->st.errors[k];
        atomic_store_explicit(&th->live_errors, e, memory_order_relaxed);
    }
    th->st.finish_us = l.now;
    sec_flush(th);
    /* Requests still in flight at the end are not answers; in increment mode
     * their values may or may not have been applied. */
    l.stopping = 1;
    for (unsigned i = 0; i < th->nconns; i++)
        if (l.conns[i].fd >= 0)
            conn_close(&l, &l.conns[i], -1, NULL);
out:
    loop_free(&l);
    return NULL;
}

/* ---- merging ---- */

static int sec_merge(lg_sec_t *dst, const lg_sec_t *src)
{
    dst->requests += src->requests;
    dst->errors += src->errors;
    if (src->n == 0)
        return 0;
    uint32_t *p = malloc(2 * (size_t)(dst->n + src->n) * sizeof *p);
    if (!p)
        return -ENOMEM;
    /* Both lists are sorted by bucket except for rare appended runs; a
     * counting pass over the buckets keeps it simple and exact. */
    static __thread uint64_t tmp[HIST_BUCKETS];
    memset(tmp, 0, sizeof tmp);
    for (uint32_t i = 0; i < dst->n; i++)
        tmp[dst->pairs[2 * i]] += dst->pairs[2 * i + 1];
    for (uint32_t i = 0; i < src->n; i++)
        tmp[src->pairs[2 * i]] += src->pairs[2 * i + 1];
    uint32_t k = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        if (tmp[i]) {
            p[2 * k] = i;
            p[2 * k + 1] = (uint32_t)tmp[i];
            k++;
        }
    free(dst->pairs);
    dst->pairs = p;
    dst->n = k;
    return 0;
}

uint64_t engine_sec_p99(const lg_sec_t *s)
{
    uint64_t total = 0, seen = 0;
    for (uint32_t i = 0; i < s->n; i++)
        total += s->pairs[2 * i + 1];
    if (total == 0)
        return 0;
    uint64_t rank = (total * 99 + 99) / 100;
    for (uint32_t i = 0; i < s->n; i++) {
        seen += s->pairs[2 * i + 1];
        if (seen >= rank)
            return hist_bucket_high(s->pairs[2 * i]);
    }
    return 0;
}

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
    if (src->nsecs > dst->nsecs) {
        lg_sec_t *s = realloc(dst->secs, src->nsecs * sizeof *s);
        if (!s)
            return -ENOMEM;
        memset(s + dst->nsecs, 0, (src->nsecs - dst->nsecs) * sizeof *s);
        dst->secs = s;
        dst->nsecs = src->nsecs;
    }
    for (size_t i = 0; i < src->nsecs; i++)
        if (sec_merge(&dst->secs[i], &src->secs[i]) < 0)
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
    return 0;
}

void engine_stats_free(lg_stats_t *st)
{
    for (size_t i = 0; i < st->nsecs; i++)
        free(st->secs[i].pairs);
    free(st->secs);
    free(st->acked);
    free(st->unacked);
    st->secs = NULL;
    st->nsecs = 0;
    st->acked = st->unacked = NULL;
}
