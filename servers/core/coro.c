#include "coro.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "asan.h"
#include "timer.h"

/* ---- the switch ---- */

/* coro_ctx_switch(from, to): push the callee-saved registers on the running
 * stack, store the stack pointer in from->sp, load to->sp, pop to's
 * registers and return where to left off. coro_boot is where a context made
 * by make_frame starts, with the registers the frame gave it: coro_enter(co),
 * entry(arg), then coro_exit(co), which does not return. co is the
 * scheduler's coroutine, NULL for a bare context (coro_ctx_make). entry is
 * called from here rather than from a wrapper in C so that no wrapper's frame
 * sits under every waiting coroutine's frames (shared stack: they are copied
 * at every switch). coro_enter and coro_exit are not static, and marked
 * used, because only the assembly calls them: the compiler (and LTO) does
 * not see those calls. */
void coro_boot(void) __attribute__((visibility("hidden")));
void coro_enter(void *co) __attribute__((visibility("hidden"), used));
void coro_exit(void *co) __attribute__((visibility("hidden"), used, noreturn));
#if defined(__x86_64__)
__asm__(".text\n"
        ".globl coro_ctx_switch\n"
        ".type coro_ctx_switch, @function\n"
        ".p2align 4\n"
        "coro_ctx_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq (%rsi), %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size coro_ctx_switch, .-coro_ctx_switch\n"
        ".globl coro_boot\n"
        ".hidden coro_boot\n"
        ".type coro_boot, @function\n"
        ".p2align 4\n"
        "coro_boot:\n"
        ".cfi_startproc\n"
        ".cfi_undefined rip\n" /* the first frame: unwinders stop here */
        "    movq %r13, %rdi\n"
        "    callq coro_enter\n"
        "    movq %rbx, %rdi\n"
        "    callq *%r12\n"
        "    movq %r13, %rdi\n"
        "    callq coro_exit\n"
        "    ud2\n"
        ".cfi_endproc\n"
        ".size coro_boot, .-coro_boot\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl coro_ctx_switch\n"
        ".type coro_ctx_switch, %function\n"
        ".p2align 4\n"
        "coro_ctx_switch:\n"
        "    sub sp, sp, #160\n"
        "    stp x19, x20, [sp, #0]\n"
        "    stp x21, x22, [sp, #16]\n"
        "    stp x23, x24, [sp, #32]\n"
        "    stp x25, x26, [sp, #48]\n"
        "    stp x27, x28, [sp, #64]\n"
        "    stp x29, x30, [sp, #80]\n"
        "    stp d8, d9, [sp, #96]\n"
        "    stp d10, d11, [sp, #112]\n"
        "    stp d12, d13, [sp, #128]\n"
        "    stp d14, d15, [sp, #144]\n"
        "    mov x9, sp\n"
        "    str x9, [x0]\n"
        "    ldr x9, [x1]\n"
        "    mov sp, x9\n"
        "    ldp x19, x20, [sp, #0]\n"
        "    ldp x21, x22, [sp, #16]\n"
        "    ldp x23, x24, [sp, #32]\n"
        "    ldp x25, x26, [sp, #48]\n"
        "    ldp x27, x28, [sp, #64]\n"
        "    ldp x29, x30, [sp, #80]\n"
        "    ldp d8, d9, [sp, #96]\n"
        "    ldp d10, d11, [sp, #112]\n"
        "    ldp d12, d13, [sp, #128]\n"
        "    ldp d14, d15, [sp, #144]\n"
        "    add sp, sp, #160\n"
        "    ret\n"
        ".size coro_ctx_switch, .-coro_ctx_switch\n"
        ".globl coro_boot\n"
        ".hidden coro_boot\n"
        ".type coro_boot, %function\n"
        ".p2align 4\n"
        "coro_boot:\n"
        ".cfi_startproc\n"
        ".cfi_undefined x30\n" /* the first frame: unwinders stop here */
        "    mov x0, x21\n"
        "    bl coro_enter\n"
        "    mov x0, x19\n"
        "    blr x20\n"
        "    mov x0, x21\n"
        "    bl coro_exit\n"
        "    brk #0\n"
        ".cfi_endproc\n"
        ".size coro_boot, .-coro_boot\n");
#endif

/* The frame coro_ctx_switch pops to start entry(arg) at top through
 * coro_boot, with zeroes for the registers that do not matter (the frame
 * pointer's zero ends the frame chain). */
static void make_frame(coro_ctx_t *ctx, char *top, void (*entry)(void *), void *arg, void *co)
{
    uintptr_t *f = (uintptr_t *)(void *)(top - CORO_FRAME_SIZE);
    memset(f, 0, CORO_FRAME_SIZE);
#if defined(__x86_64__)
    /* r15 r14 r13 r12 rbx rbp, then the return address: coro_boot starts
     * with the stack pointer at top, 16-byte aligned as a call wants it. */
    f[2] = (uintptr_t)co;    /* r13 */
    f[3] = (uintptr_t)entry; /* r12 */
    f[4] = (uintptr_t)arg;   /* rbx */
    f[6] = (uintptr_t)coro_boot;
#else
    /* x19 .. x28, x29 x30, d8 .. d15: sp ends at top, aligned. */
    f[0] = (uintptr_t)arg;        /* x19 */
    f[1] = (uintptr_t)entry;      /* x20 */
    f[2] = (uintptr_t)co;         /* x21 */
    f[11] = (uintptr_t)coro_boot; /* x30 */
#endif
    ctx->sp = f;
}

void coro_ctx_make(coro_ctx_t *ctx, char *top, void (*entry)(void *), void *arg)
{
    make_frame(ctx, top, entry, arg, NULL);
}

int coro_stack_alloc(coro_stack_t *st, size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size = (size + page - 1) / page * page;
    /* MAP_NORESERVE: the stack's bytes are an upper bound, rarely touched. */
    char *m = mmap(NULL, size + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    if (mprotect(m, page, PROT_NONE) < 0) {
        int e = errno;
        munmap(m, size + page);
        return -e;
    }
    st->map = m;
    st->len = size + page;
    st->lo = m + page;
    st->size = size;
#ifdef CORE_ASAN
    /* A region unmapped before may keep the shadow of the frames that were
     * on it: a fresh stack has none. */
    ASAN_UNPOISON_MEMORY_REGION(st->lo, st->size);
#endif
    return 0;
}

void coro_stack_free(coro_stack_t *st)
{
    if (st->map)
        munmap(st->map, st->len);
    st->map = st->lo = NULL;
}

/* ---- the scheduler ---- */

enum { C_READY, C_RUNNING, C_WAITING, C_DONE };

typedef struct coro coro_t;
struct coro {
    coro_ctx_t ctx;              /* its registers, while it does not run */
    timer_node_t timer;          /* the deadline of its wait */
    coro_t *next;                /* the ready queue */
    coro_t *prev_all, *next_all; /* every coroutine (the stop wakes them all) */
    char *mem;                   /* own stack: its mapping; shared: its stack put aside */
    int fd;                      /* the descriptor registered with epoll, -1 none */
    int8_t result;               /* what its wait returns */
    uint8_t state;               /* C_* */
    uint8_t armed;               /* the epoll events registered for fd */
    uint8_t on_fd;               /* its wait is for fd (not a sleep alone) */
#ifdef CORE_ASAN
    void *asan_fake; /* its fake stack (detect_stack_use_after_return) */
#endif
};

/* The scheduler of this thread. */
static __thread struct {
    int ep;            /* epoll; 0: not started */
    int stop_fd;       /* watched until it fires, then -1 */
    int own;           /* each coroutine has its own stack */
    size_t stack_size; /* each stack's usable bytes (whole pages) */
    size_t page;
    coro_stack_t shared; /* the shared stack */
    coro_t *occupant;    /* the coroutine whose frames are on the shared stack */
    coro_ctx_t main;     /* the scheduler's own context */
    coro_t *current;     /* the running coroutine, NULL on the loop */
    coro_t *ready, *ready_tail;
    coro_t *all;  /* every coroutine not ended */
    size_t count; /* their number */
    timers_t timers;
#ifdef CORE_ASAN
    const void *main_bottom; /* the thread's stack, for the way back */
    size_t main_size;
#endif
} S;

static int stop_marker; /* epoll data of the stop descriptor */

/* The top of the stack c runs on. */
static char *stack_top(const coro_t *c)
{
    if (S.own)
        return c->mem + S.page + S.stack_size;
    return S.shared.lo + S.shared.size;
}

static void make_ready(coro_t *c, int result)
{
    c->result = (int8_t)result;
    c->state = C_READY;
    c->next = NULL;
    if (S.ready_tail)
        S.ready_tail->next = c;
    else
        S.ready = c;
    S.ready_tail = c;
}

/* Shared stack: c has just started waiting; make room for its frames in its
 * buffer (exactly their size), so that putting them aside when another
 * coroutine runs cannot fail. Returns 0 or -ENOMEM. The buffer's size is
 * malloc's to remember: a field for it would take the record past 72
 * bytes, to malloc's next size (16 bytes more for every coroutine). */
static int keep_room(coro_t *c)
{
    size_t need = (size_t)(stack_top(c) - (char *)c->ctx.sp);
    if (need <= malloc_usable_size(c->mem))
        return 0;
    char *m = realloc(c->mem, need);
    if (!m)
        return -ENOMEM;
    c->mem = m;
    return 0;
}

/* From a coroutine: back to the scheduler's loop, until it resumes us. */
static void park(coro_t *c)
{
#ifdef CORE_ASAN
    /* An ended coroutine's fake stack is freed (NULL); a waiting one's kept. */
    __sanitizer_start_switch_fiber(c->state == C_DONE ? NULL : &c->asan_fake, S.main_bottom,
                                   S.main_size);
#endif
    coro_ctx_switch(&c->ctx, &S.main);
#ifdef CORE_ASAN
    __sanitizer_finish_switch_fiber(c->asan_fake, &S.main_bottom, &S.main_size);
#endif
}

/* coro_boot, before a coroutine's function (NULL: a bare context). */
void coro_enter(void *co)
{
#ifdef CORE_ASAN
    if (co) /* the switch that started it, seen from its side */
        __sanitizer_finish_switch_fiber(NULL, &S.main_bottom, &S.main_size);
#endif
    (void)co;
}

/* coro_boot, once a coroutine's function has returned: away for good. */
void coro_exit(void *co)
{
    coro_t *c = co;
    if (!c)
        abort(); /* a bare context's entry returned: there is nowhere to go */
    c->state = C_DONE;
    park(c);
    abort(); /* the loop destroys an ended coroutine, never resumes it */
}

/* On the loop: run c until it waits or ends. On the shared stack, the
 * frames of the coroutine there go aside first, and c's come back. */
static void resume(coro_t *c)
{
    char *top = stack_top(c);
    if (!S.own && S.occupant != c) {
        coro_t *o = S.occupant;
#ifdef CORE_ASAN
        /* The redzones of the frames on it are no one's once they move. */
        ASAN_UNPOISON_MEMORY_REGION(S.shared.lo, S.shared.size);
#endif
        if (o) /* waiting, or woken and not yet run: room was made (keep_room) */
            memcpy(o->mem, o->ctx.sp, (size_t)(top - (char *)o->ctx.sp));
        memcpy(c->ctx.sp, c->mem, (size_t)(top - (char *)c->ctx.sp));
        S.occupant = c;
    }
    c->state = C_RUNNING;
    S.current = c;
#ifdef CORE_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, top - (S.own ? S.stack_size : S.shared.size),
                                   S.own ? S.stack_size : S.shared.size);
#endif
    coro_ctx_switch(&S.main, &c->ctx);
#ifdef CORE_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    S.current = NULL;
}

/* Free an ended coroutine (on the loop, off its stack). */
static void destroy(coro_t *c)
{
    /* Cannot fail: cancelling a deadline. */
    (void)timers_set(&S.timers, &c->timer, 0);
    /* A descriptor left open (a listener) would report its events to a
     * freed coroutine. Closed, it has left epoll already: EBADF, ignored. */
    if (c->fd >= 0)
        (void)epoll_ctl(S.ep, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else
        S.all = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    S.count--;
    if (S.own) {
        coro_stack_t st = {.map = c->mem, .len = S.page + S.stack_size};
        coro_stack_free(&st);
    } else {
        free(c->mem);
        if (S.occupant == c)
            S.occupant = NULL;
    }
    free(c);
}

int coro_sched_init(size_t stack_size, int own_stacks, int stop_fd)
{
    if (S.ep > 0)
        return -EBUSY;
    if (stack_size < (16 << 10))
        return -EINVAL;
    memset(&S, 0, sizeof S);
    S.own = own_stacks;
    S.page = (size_t)sysconf(_SC_PAGESIZE);
    S.stack_size = (stack_size + S.page - 1) / S.page * S.page;
    S.stop_fd = -1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    int rc = 0;
    if (!own_stacks && (rc = coro_stack_alloc(&S.shared, S.stack_size)) < 0)
        goto err;
    if (stop_fd >= 0) {
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &stop_marker};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, stop_fd, &e) < 0) {
            rc = -errno;
            goto err;
        }
        S.stop_fd = stop_fd;
    }
    S.ep = ep;
    return 0;
err:
    coro_stack_free(&S.shared);
    close(ep);
    return rc;
}

int coro_spawn(coro_fn fn, void *arg)
{
    if (S.ep <= 0)
        return -EPERM;
    /* A place in the heap for its deadline now, so that a wait cannot fail
     * to file one. */
    if (timers_reserve(&S.timers, S.count + 1) < 0)
        return -ENOMEM;
    coro_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->fd = -1;
    if (S.own) {
        coro_stack_t st;
        if (coro_stack_alloc(&st, S.stack_size) < 0) {
            free(c);
            return -ENOMEM;
        }
        c->mem = st.map;
        make_frame(&c->ctx, st.lo + st.size, fn, arg, c);
    } else {
        /* Its first frame waits aside like any other, copied in when it
         * first runs: made in its buffer as if that were the stack's top. */
        c->mem = malloc(CORO_FRAME_SIZE);
        if (!c->mem) {
            free(c);
            return -ENOMEM;
        }
        make_frame(&c->ctx, c->mem + CORO_FRAME_SIZE, fn, arg, c);
        c->ctx.sp = S.shared.lo + S.shared.size - CORO_FRAME_SIZE;
    }
    c->next_all = S.all;
    if (S.all)
        S.all->prev_all = c;
    S.all = c;
    S.count++;
    make_ready(c, 0);
    return 0;
}

void *coro_self(void)
{
    return S.current;
}

void coro_wake(void *co)
{
    coro_t *c = co;
    if (c->state == C_WAITING)
        make_ready(c, CORO_WAKE);
}

size_t coro_count(void)
{
    return S.count;
}

/* What epoll reported, as CORO_* bits. */
static int bits(unsigned ev)
{
    return ((ev & EPOLLIN) ? CORO_READ : 0) | ((ev & EPOLLOUT) ? CORO_WRITE : 0) |
           ((ev & (EPOLLERR | EPOLLHUP)) ? CORO_ERROR : 0);
}

/* The stop descriptor fired: wake every waiting coroutine once. */
static void on_stop(void)
{
    /* Cannot fail: it is registered; it stays readable, so it goes. */
    (void)epoll_ctl(S.ep, EPOLL_CTL_DEL, S.stop_fd, NULL);
    S.stop_fd = -1;
    for (coro_t *c = S.all; c; c = c->next_all)
        if (c->state == C_WAITING)
            make_ready(c, -EINTR);
}

int coro_sched_run(void)
{
    int rc = 0;
    if (S.ep <= 0)
        return -EPERM;
    time_update();
    for (;;) {
        coro_t *c;
        while ((c = S.ready) != NULL) {
            S.ready = c->next;
            if (!S.ready)
                S.ready_tail = NULL;
            resume(c);
            if (c->state == C_DONE) {
                destroy(c);
            } else if (c->state == C_WAITING && !S.own && keep_room(c) < 0) {
                /* Its frames cannot be put aside: its wait fails instead.
                 * It runs next, while they are still on the stack. */
                c->result = -ENOMEM;
                c->state = C_READY;
                c->next = S.ready;
                S.ready = c;
                if (!S.ready_tail)
                    S.ready_tail = c;
            }
        }
        if (!S.count)
            break;
        struct epoll_event evs[256];
        int n = epoll_wait(S.ep, evs, 256, timers_timeout(&S.timers, time_now_ms()));
        time_update();
        if (n < 0 && errno != EINTR) {
            rc = -errno;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &stop_marker) {
                on_stop();
                continue;
            }
            c = evs[i].data.ptr;
            if (c->state != C_WAITING)
                continue; /* woken already (the stop): it is reported again */
            if (c->on_fd) {
                make_ready(c, bits(evs[i].events));
            } else {
                /* Asleep while its descriptor is registered: level-triggered,
                 * the event would come back at every wake-up. Its next wait
                 * on it registers it again. Cannot fail: it is registered. */
                (void)epoll_ctl(S.ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->fd = -1;
                c->armed = 0;
            }
        }
        timer_node_t *t;
        while ((t = timers_expired(&S.timers, time_now_ms())) != NULL) {
            c = (coro_t *)(void *)((char *)t - offsetof(coro_t, timer));
            if (c->state == C_WAITING)
                make_ready(c, 0);
        }
    }
    /* Normally none is left; after a failure, the rest are abandoned. */
    while (S.all) {
        S.all->state = C_DONE;
        destroy(S.all);
    }
    timers_free(&S.timers);
    coro_stack_free(&S.shared);
    close(S.ep);
    S.ep = 0;
    return rc;
}

/* coro_wait's work before the switch: register fd for events (or check it)
 * and file the deadline. Returns 0 or -errno. Out of line so that none of
 * its locals is in coro_wait's frame while c waits: on the shared stack that
 * frame is copied at every switch and kept for as long as c waits. */
static __attribute__((noinline)) int prepare_wait(coro_t *c, int fd, int events, int64_t deadline)
{
    if (fd >= 0) {
        if (c->fd >= 0 && c->fd != fd)
            return -EINVAL;
        unsigned want =
            ((events & CORO_READ) ? EPOLLIN : 0) | ((events & CORO_WRITE) ? EPOLLOUT : 0);
        if (c->fd < 0) {
            struct epoll_event e = {.events = want, .data.ptr = c};
            if (epoll_ctl(S.ep, EPOLL_CTL_ADD, fd, &e) < 0)
                return -errno;
            c->fd = fd;
            c->armed = (uint8_t)want;
        } else if (want != c->armed) {
            /* Only when the events change, as an event loop does: a
             * request answered in one go keeps EPOLLIN and costs no call. */
            struct epoll_event e = {.events = want, .data.ptr = c};
            /* Cannot fail: the descriptor is open and registered. */
            (void)epoll_ctl(S.ep, EPOLL_CTL_MOD, fd, &e);
            c->armed = (uint8_t)want;
        }
    }
    c->on_fd = fd >= 0;
    /* Cannot fail: coro_spawn reserved its place. */
    (void)timers_set(&S.timers, &c->timer, deadline);
    return 0;
}

int coro_wait(int fd, int events, int64_t deadline)
{
    coro_t *c = S.current;
    if (!c)
        return -EPERM;
    int rc = prepare_wait(c, fd, events, deadline);
    if (rc < 0)
        return rc;
    c->state = C_WAITING;
    park(c);
    return c->result;
}

int coro_sleep(int64_t deadline)
{
    return coro_wait(-1, 0, deadline);
}
