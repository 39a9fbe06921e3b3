#include "chat.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "buf.h"

typedef struct room {
    char name[CHAT_NAME_MAX];
    size_t len;
    int count; /* members */
    int refs;  /* members, and CHAT_LOOPS posts on their way to a loop */
    struct room *next;
    struct chat_member *first[]; /* its members on each loop (one list but in CHAT_LOOPS) */
} room_t;

/* CHAT_LOOPS: a line on its way to the members of a room on one loop. */
struct post {
    room_t *room;
    struct post *next;
    size_t len;
    char line[];
};

/* CHAT_LOOPS: a loop's mailbox, rung through its eventfd. */
struct mailbox {
    pthread_mutex_t lock;
    struct post *head, **tail;
    int fd;
};

/* A connection's place in the chat (session_t.chat), made by its first
 * JOIN. Only its own thread touches s, room and the links outside c->lock;
 * others reach it under c->lock, and its inbox under its own lock. */
struct chat_member {
    session_t *s;
    chat_t *chat;
    room_t *room;
    struct chat_member *prev, *next;
    pthread_mutex_t lock; /* CHAT_THREADS: guards inbox and cut */
    buf_t inbox;          /* CHAT_THREADS, CHAT_TASKS: lines its owner has not taken */
    void *task;           /* CHAT_TASKS: what wake_task wakes */
    int cut;              /* fell too far behind: the owner cuts it at its next chat_take */
    int wake_fd;          /* CHAT_THREADS: an eventfd, else -1 */
    int loop;             /* CHAT_LOOPS: the loop that serves it, else 0 */
};

struct chat {
    enum chat_mode mode;
    chat_wake_fn wake;
    void *ctx;
    void *(*self)(void);           /* CHAT_TASKS: the calling task */
    void (*wake_task)(void *task); /* CHAT_TASKS */
    pthread_mutex_t lock;          /* CHAT_THREADS, CHAT_LOOPS: guards the rooms and their lists */
    room_t *rooms;
    int loops;            /* CHAT_LOOPS: how many, else 1 */
    struct mailbox *mail; /* CHAT_LOOPS: one per loop */
};

static __thread int this_loop; /* chat_loop_bind */

static const char slow[] = "ERR slow consumer\n";

/* s's unsent output: its buffer, and what a design that moves the bytes
 * itself (io_uring) has taken from it and not yet sent. */
static size_t unsent(const session_t *s)
{
    return buf_used(&s->out) + s->lent;
}

chat_t *chat_new(enum chat_mode mode, chat_wake_fn wake, void *ctx)
{
    chat_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->mode = mode;
    c->wake = wake;
    c->ctx = ctx;
    c->loops = 1;
    /* Cannot fail: default attributes. */
    (void)pthread_mutex_init(&c->lock, NULL);
    return c;
}

chat_t *chat_new_tasks(void *(*self)(void), void (*wake)(void *task))
{
    chat_t *c = chat_new(CHAT_TASKS, NULL, NULL);
    if (c) {
        c->self = self;
        c->wake_task = wake;
    }
    return c;
}

chat_t *chat_new_loops(int loops, chat_wake_fn wake, void *ctx)
{
    chat_t *c = chat_new(CHAT_LOOPS, wake, ctx);
    if (!c || !(c->mail = calloc((size_t)loops, sizeof *c->mail)))
        goto err;
    c->loops = loops;
    for (int i = 0; i < loops; i++) {
        struct mailbox *mb = &c->mail[i];
        mb->tail = &mb->head;
        /* Cannot fail: default attributes. */
        (void)pthread_mutex_init(&mb->lock, NULL);
        if ((mb->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
            while (i-- > 0)
                close(c->mail[i].fd);
            goto err;
        }
    }
    return c;
err:
    if (c)
        free(c->mail);
    free(c);
    return NULL;
}

void chat_free(chat_t *c)
{
    if (!c)
        return;
    for (int i = 0; c->mail && i < c->loops; i++) {
        struct post *p = c->mail[i].head;
        while (p) {
            struct post *next = p->next;
            free(p);
            p = next;
        }
        close(c->mail[i].fd);
    }
    while (c->rooms) { /* none: every member has left */
        room_t *r = c->rooms;
        c->rooms = r->next;
        free(r);
    }
    free(c->mail);
    free(c);
}

void chat_loop_bind(int loop)
{
    this_loop = loop;
}

int chat_loop_fd(const chat_t *c, int loop)
{
    return c->mail[loop].fd;
}

/* The rooms' lock, where several threads share them. */
static void lock(chat_t *c)
{
    if (c->mode == CHAT_THREADS || c->mode == CHAT_LOOPS)
        pthread_mutex_lock(&c->lock);
}

static void unlock(chat_t *c)
{
    if (c->mode == CHAT_THREADS || c->mode == CHAT_LOOPS)
        pthread_mutex_unlock(&c->lock);
}

/* A member's inbox lock, where another thread posts to it. */
static void lock_member(chat_t *c, struct chat_member *m)
{
    if (c->mode == CHAT_THREADS)
        pthread_mutex_lock(&m->lock);
}

static void unlock_member(chat_t *c, struct chat_member *m)
{
    if (c->mode == CHAT_THREADS)
        pthread_mutex_unlock(&m->lock);
}

/* Drop a reference to r (under c->lock); the last one frees it. */
static void room_put(chat_t *c, room_t *r)
{
    if (--r->refs > 0)
        return;
    room_t **p = &c->rooms;
    while (*p != r)
        p = &(*p)->next;
    *p = r->next;
    free(r);
}

/* Take m out of its room (under c->lock); an empty room goes. */
static void unlink_member(chat_t *c, struct chat_member *m)
{
    room_t *r = m->room;
    if (!r)
        return;
    if (m->prev)
        m->prev->next = m->next;
    else
        r->first[m->loop] = m->next;
    if (m->next)
        m->next->prev = m->prev;
    m->prev = m->next = NULL;
    m->room = NULL;
    r->count--;
    room_put(c, r);
}

/* Cut s, the slow consumer (on its own thread, or on the one loop): out of
 * the room, told why after what it has, closed once that is written. */
static void cut(chat_t *c, struct chat_member *m)
{
    session_t *s = m->s;
    lock(c);
    unlink_member(c, m);
    unlock(c);
    if (buf_append(&s->out, slow, sizeof slow - 1) < 0 && !buf_used(&s->out))
        s->closing = 2; /* nothing to write, not even the reason: close now */
    else if (!s->closing)
        s->closing = 1;
}

/* On s's own thread: move the lines waiting in m's inbox to s's output
 * (CHAT_THREADS, CHAT_TASKS; the others' inboxes stay empty). Returns 1 when
 * s is too far behind (to be cut), else 0. */
static int move_inbox(chat_t *c, struct chat_member *m, session_t *s)
{
    lock_member(c, m);
    if (buf_used(&m->inbox) && !m->cut &&
        buf_append(&s->out, buf_head(&m->inbox), buf_used(&m->inbox)) < 0)
        m->cut = 1;
    buf_consume(&m->inbox, buf_used(&m->inbox));
    int behind = m->cut || unsent(s) > CHAT_OUT_LIMIT;
    unlock_member(c, m);
    return behind;
}

int chat_join(chat_t *c, session_t *s, const char *name, size_t len)
{
    struct chat_member *m = s->chat;
    if (len > CHAT_NAME_MAX)
        return -ENAMETOOLONG;
    if (!m) {
        if (!(m = calloc(1, sizeof *m)))
            return -ENOMEM;
        m->s = s;
        m->chat = c;
        m->wake_fd = -1;
        m->loop = c->mode == CHAT_LOOPS ? this_loop : 0;
        m->task = c->mode == CHAT_TASKS ? c->self() : NULL;
        if (c->mode == CHAT_THREADS && (m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
            int e = errno;
            free(m);
            return -e;
        }
        /* Cannot fail: default attributes. */
        (void)pthread_mutex_init(&m->lock, NULL);
        s->chat = m;
    }
    lock(c);
    room_t *r = c->rooms;
    while (r && !(r->len == len && memcmp(r->name, name, len) == 0))
        r = r->next;
    if (!r || r != m->room) {
        if (!r) {
            if (!(r = calloc(1, sizeof *r + (size_t)c->loops * sizeof r->first[0]))) {
                unlock(c);
                return -ENOMEM;
            }
            memcpy(r->name, name, len);
            r->len = len;
            r->next = c->rooms;
            c->rooms = r;
        }
        /* The new room first: the old one may go with its last member. */
        r->count++;
        r->refs++;
        if (m->room) {
            unlink_member(c, m);
            /* What the old room sent comes before JOINED, as on one loop.
             * Under c->lock no one posts to m meanwhile; if it is too far
             * behind, m->cut stays set and its next chat_take cuts it. */
            (void)move_inbox(c, m, s);
        }
        m->room = r;
        m->next = r->first[m->loop];
        if (m->next)
            m->next->prev = m;
        r->first[m->loop] = m;
    }
    int n = r->count;
    unlock(c);
    return n;
}

/* Put one MSG line into the inbox of a member served by another thread or
 * task (under c->lock), waking it when its inbox was empty: its eventfd
 * rings (CHAT_THREADS) or its task is woken (CHAT_TASKS). It is not woken
 * again until it has taken the line. */
static void post_line(chat_t *c, struct chat_member *m, const char *line, size_t n)
{
    int ring = 0;
    lock_member(c, m);
    if (!m->cut) {
        ring = buf_used(&m->inbox) == 0;
        if (buf_append(&m->inbox, line, n) < 0 || buf_used(&m->inbox) > CHAT_OUT_LIMIT)
            m->cut = 1;
        ring |= m->cut;
    }
    unlock_member(c, m);
    uint64_t one = 1;
    if (!ring)
        return;
    if (c->mode == CHAT_TASKS)
        c->wake_task(m->task);
    else if (write(m->wake_fd, &one, sizeof one) < 0) {
        /* the counter is already non-zero: the owner wakes anyway */
    }
}

/* Put the line into the members of room r on list `loop` (the one loop's,
 * or a loop's of CHAT_LOOPS), on the thread that serves them, and wake each
 * but s. The caller holds c->lock but in CHAT_LOOPS, where only this loop
 * changes this list. Returns the members reached. */
static int deliver(chat_t *c, room_t *r, int loop, session_t *s, const char *line, size_t n)
{
    int reached = 0;
    for (struct chat_member *x = r->first[loop], *next; x; x = next) {
        next = x->next; /* a cut below unlinks x */
        session_t *to = x->s;
        if (to->closing)
            continue; /* dead, or answering its last and closing */
        reached++;
        if (buf_append(&to->out, line, n) < 0 || unsent(to) > CHAT_OUT_LIMIT) {
            if (c->mode == CHAT_LOOPS)
                lock(c);
            unlink_member(c, x);
            if (c->mode == CHAT_LOOPS)
                unlock(c);
            if (buf_append(&to->out, slow, sizeof slow - 1) < 0 && !buf_used(&to->out))
                to->closing = 2;
            else
                to->closing = 1;
        }
        if (to != s)
            c->wake(to, c->ctx);
    }
    return reached;
}

/* CHAT_LOOPS: queue the line for the members of r on another loop (under
 * c->lock). Out of memory, they miss it. */
static void post_loop(chat_t *c, room_t *r, int loop, const char *line, size_t n)
{
    struct post *p = malloc(sizeof *p + n);
    if (!p)
        return;
    p->room = r;
    p->next = NULL;
    p->len = n;
    memcpy(p->line, line, n);
    r->refs++; /* the room stays until the post is delivered */
    struct mailbox *mb = &c->mail[loop];
    pthread_mutex_lock(&mb->lock);
    int ring = mb->head == NULL;
    *mb->tail = p;
    mb->tail = &p->next;
    pthread_mutex_unlock(&mb->lock);
    uint64_t one = 1;
    if (ring && write(mb->fd, &one, sizeof one) < 0) {
        /* the counter is already non-zero: the loop wakes anyway */
    }
}

int chat_say(chat_t *c, session_t *s, const char *text, size_t len)
{
    struct chat_member *m = s->chat;
    char line[4 + 4096 + 1];
    if (!m || !m->room)
        return -ENOTCONN;
    if (len > sizeof line - 5)
        len = sizeof line - 5; /* a command line is shorter (PROTO_MAX_LINE) */
    memcpy(line, "MSG ", 4);
    memcpy(line + 4, text, len);
    line[4 + len] = '\n';
    size_t n = len + 5;
    room_t *r = m->room;
    int reached = 0, self_cut = 0;
    lock(c);
    if (c->mode == CHAT_THREADS || c->mode == CHAT_TASKS) {
        for (struct chat_member *x = r->first[0]; x; x = x->next)
            if (x != m) {
                post_line(c, x, line, n); /* its session is its thread's or task's alone */
                reached++;
            }
        /* s itself, on its own thread, after what was posted to it before
         * (under c->lock: every member sees the room's lines in one order) */
        reached++;
        self_cut = move_inbox(c, m, s);
        self_cut |= buf_append(&s->out, line, n) < 0 || unsent(s) > CHAT_OUT_LIMIT;
    } else if (c->mode == CHAT_LOOPS) {
        for (int i = 0; i < c->loops; i++)
            if (i != m->loop && r->first[i])
                post_loop(c, r, i, line, n);
    } else {
        reached = deliver(c, r, 0, s, line, n);
    }
    unlock(c);
    if (c->mode == CHAT_LOOPS) /* this loop's own members, s among them */
        reached += deliver(c, r, m->loop, s, line, n);
    if (self_cut)
        cut(c, m); /* s fell behind its own room */
    return reached;
}

void chat_loop_run(chat_t *c, int loop)
{
    struct mailbox *mb = &c->mail[loop];
    uint64_t n;
    /* Read the counter first: a post queued after the take rings again. */
    if (read(mb->fd, &n, sizeof n) < 0) {
        /* nothing to read: a spurious wake-up */
    }
    pthread_mutex_lock(&mb->lock);
    struct post *p = mb->head;
    mb->head = NULL;
    mb->tail = &mb->head;
    pthread_mutex_unlock(&mb->lock);
    while (p) {
        struct post *next = p->next;
        deliver(c, p->room, loop, NULL, p->line, p->len);
        lock(c);
        room_put(c, p->room);
        unlock(c);
        free(p);
        p = next;
    }
}

void chat_take(session_t *s)
{
    struct chat_member *m = s->chat;
    uint64_t n;
    if (!m || (m->wake_fd < 0 && m->chat->mode != CHAT_TASKS))
        return;
    /* Read the counter first: a line posted after the take rings again. */
    if (m->wake_fd >= 0 && read(m->wake_fd, &n, sizeof n) < 0) {
        /* nothing to read: a spurious wake-up */
    }
    if (move_inbox(m->chat, m, s) && m->room)
        cut(m->chat, m);
}

void chat_leave(session_t *s)
{
    struct chat_member *m = s->chat;
    if (!m)
        return;
    lock(m->chat);
    unlink_member(m->chat, m);
    unlock(m->chat);
    /* What the room sent while s was in it comes before LEFT, as on one
     * loop (on close, it goes with the output). No one posts to m now. */
    (void)move_inbox(m->chat, m, s);
    if (m->wake_fd >= 0)
        close(m->wake_fd);
    buf_free(&m->inbox);
    (void)pthread_mutex_destroy(&m->lock); /* cannot fail: nobody holds it, out of the room */
    free(m);
    s->chat = NULL;
}

int chat_wake_fd(const session_t *s)
{
    return s->chat && s->chat->room ? s->chat->wake_fd : -1;
}

int chat_pending(const session_t *s)
{
    const struct chat_member *m = s->chat;
    return m && m->room && (buf_used(&m->inbox) || m->cut);
}
