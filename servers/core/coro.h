/* coro: coroutines on one thread, and a scheduler that runs them on one
 * epoll loop (the coro design's runtime; servers/coro.c is the design).
 *
 * A coroutine is a function with a stack of its own frames: where a thread
 * would block, it calls coro_wait (a descriptor's readiness, a deadline, or
 * both), and the scheduler runs the others meanwhile. The scheduler is an
 * event loop: epoll_wait until a watched descriptor is ready or the earliest
 * deadline (a timers_t heap) passes, then resume each coroutine that was
 * waiting for it, one after the other.
 *
 * A switch is coro_ctx_switch: push the callee-saved registers, swap the
 * stack pointer, pop the other's, return on its stack. About twenty
 * instructions and no system call, where swapcontext(3) also saves and sets
 * the signal mask (two rt_sigprocmask calls per switch); tests/unit/
 * test_coro.c measures both. x86-64 and aarch64; the floating-point control
 * registers (MXCSR, x87 CW, FPCR) are not switched: nothing here changes them.
 *
 * Stacks, two ways (coro_sched_init's own_stacks):
 *  - own: each coroutine gets a stack of stack_size bytes, mmap'ed with an
 *    inaccessible guard page below it, so that an overflow faults (SIGSEGV)
 *    instead of writing over another's memory. The kernel gives it pages as
 *    they are touched, but a live coroutine keeps at least its top page: 4
 *    KiB at the least per coroutine, more once it has been deep (a request's
 *    parsing and answering), for as long as it lives.
 *  - shared (the default): every coroutine runs on the scheduler's one stack
 *    (stack_size, guarded the same way). When another coroutine is to run,
 *    the used part of the one on it (from its stack pointer to the top: a
 *    few hundred bytes while it waits) is copied aside into a buffer of its
 *    own, and copied back when it runs again. A waiting coroutine then costs
 *    what its frames hold, not a page: an idle connection about what an
 *    event loop's costs. The price is the copy (a few hundred bytes each
 *    way, when the coroutine that runs changes) and one rule: while a
 *    coroutine waits, its stack is elsewhere, so no one may hold a pointer
 *    into it (hand others heap memory, never a local's address).
 *
 * A coroutine must not block the thread (a blocking read, sleep()): every
 * other coroutine would wait with it. Under AddressSanitizer every switch is
 * told to it (its fiber interface), or it would take a coroutine's stack for
 * a corrupted thread stack. */
#ifndef CORE_CORO_H
#define CORE_CORO_H

#include <stddef.h>
#include <stdint.h>

/* ---- the switch itself ---- */

/* A context: where a coroutine's registers wait while it does not run. */
typedef struct coro_ctx {
    void *sp; /* its stack pointer; the registers are on its stack */
} coro_ctx_t;

/* Bytes coro_ctx_make writes below the top of a stack: the registers a
 * switch pops and its return address. */
#if defined(__x86_64__)
#define CORO_FRAME_SIZE 56
#elif defined(__aarch64__)
#define CORO_FRAME_SIZE 160
#else
#error "coro: coro_ctx_switch is written for x86-64 and aarch64"
#endif

/* Prepare ctx so that the first switch to it calls entry(arg) on the stack
 * whose top (highest address, 16-byte aligned) is top; entry must never
 * return (it switches away for good at its end; a return aborts). Writes
 * CORO_FRAME_SIZE bytes below top. */
void coro_ctx_make(coro_ctx_t *ctx, char *top, void (*entry)(void *), void *arg);

/* Save the running context into from and run to: returns when something
 * switches back to from. No system call. */
void coro_ctx_switch(coro_ctx_t *from, coro_ctx_t *to);

/* A stack: size usable bytes at lo, an inaccessible guard page below. */
typedef struct coro_stack {
    char *map;  /* the mapping, guard included */
    size_t len; /* its length */
    char *lo;   /* lowest usable byte; the top is lo + size */
    size_t size;
} coro_stack_t;

/* Map a stack of size bytes (rounded up to pages) with a PROT_NONE guard page
 * below it: an overflow faults instead of writing over other memory. Only
 * the pages touched take memory. Returns 0 or -errno (-ENOMEM). */
int coro_stack_alloc(coro_stack_t *st, size_t size);

/* Unmap a stack from coro_stack_alloc (nothing running on it). */
void coro_stack_free(coro_stack_t *st);

/* ---- the scheduler: one per thread ---- */

/* coro_wait's events, and its result's bits. */
#define CORO_READ  1 /* readable (or the peer closed) */
#define CORO_WRITE 2 /* writable */
#define CORO_ERROR 4 /* in the result only: an error or hang-up on the descriptor */
#define CORO_WAKE  8 /* in the result only: coro_wake woke it */

typedef void (*coro_fn)(void *arg);

/* Start this thread's scheduler: coroutines' stacks of stack_size bytes (at
 * least 16 KiB), each its own (own_stacks) or one shared (see above), and
 * stop_fd (or -1): once it becomes readable, every coroutine waiting then is
 * woken (coro_wait returns -EINTR), and it is watched no more. Returns 0 or
 * -errno (the scheduler is then not started). */
int coro_sched_init(size_t stack_size, int own_stacks, int stop_fd);

/* Make a coroutine that will run fn(arg), from this thread's scheduler's
 * loop or from a coroutine of it; it first runs when the current coroutine
 * waits (or, before coro_sched_run, once that starts). Returns 0 or -ENOMEM. */
int coro_spawn(coro_fn fn, void *arg);

/* Run the coroutines until none is left, then free the scheduler (its
 * stacks, epoll descriptor and heap; coro_sched_init starts another).
 * Returns 0, or -errno when epoll_wait failed (the coroutines left are then
 * abandoned: their memory freed, their descriptors left open). */
int coro_sched_run(void);

/* From a coroutine: wait until fd is ready for events (CORO_READ,
 * CORO_WRITE; 0 waits for an error or hang-up only), or until deadline (ms
 * on time_now_ms's clock; 0: none), whichever comes first; fd -1 waits for
 * the deadline alone. Returns the CORO_* bits that were ready, 0 when the
 * deadline passed, -EINTR when the stop descriptor woke it, or -errno:
 * -EPERM outside a coroutine, -EINVAL for a second descriptor (a coroutine
 * watches one in its life: the first it waits on, which must stay open
 * while it waits on it, and not be shared with a dup or a child: epoll
 * forgets a descriptor when its last copy closes), -ENOMEM (shared stack:
 * no memory to put its stack aside), or epoll_ctl's error registering fd.
 * When the coroutine ends, its descriptor leaves epoll, open or closed.
 * The clock (time_now_ms) is brought up to date at each of the scheduler's
 * wake-ups. */
int coro_wait(int fd, int events, int64_t deadline);

/* From a coroutine: wait until deadline (coro_wait(-1, 0, deadline)).
 * Returns 0, or coro_wait's -errno. */
int coro_sleep(int64_t deadline);

/* The running coroutine (NULL on the scheduler's loop): a handle for
 * coro_wake, valid until the coroutine ends. */
void *coro_self(void);

/* Wake coroutine co (a coro_self of this thread's scheduler, not ended): if
 * it is waiting, its coro_wait returns CORO_WAKE; if it is running or about
 * to, nothing happens (it must look for what it was woken for before it
 * waits again). No system call. */
void coro_wake(void *co);

/* The coroutines of this thread's scheduler not yet ended. */
size_t coro_count(void);

#endif
