/* coro server - a coroutine per connection: the threads design's code (read,
 * parse, answer, a WAIT as a sleep), run by a scheduler on one epoll loop.
 *
 * 1. A coroutine accepts: where the threads design's main thread blocks in
 *    poll() for the next connection, it waits in the scheduler
 *    (server_accept_coro), and starts a coroutine for each connection.
 * 2. A connection's coroutine runs serve(), the threads design's loop line
 *    for line: wait for what the session wants, let it act, go round. Only
 *    the wait differs: server_wait_coro registers the socket with the
 *    scheduler's epoll (once, and again only when the events change) and its
 *    deadline (a WAIT's end, the timeouts) in a timer heap, then switches to
 *    the scheduler. A WAIT is a sleep, as in a thread.
 * 3. The scheduler (servers/core/coro.c) is an event loop: epoll_wait, then
 *    switch to each coroutine whose socket is ready or whose deadline has
 *    passed. A switch saves six registers and the stack pointer: no system
 *    call, and no kernel context switch per request, where the threads
 *    design has two.
 * 4. The chat's broadcast: a SAY cannot append to another member's output,
 *    whose session is on a stack put aside (see 5). The line goes into the
 *    member's inbox on the heap and coro_wake makes its coroutine's wait
 *    return (core/chat.h, CHAT_TASKS): no lock, and a wake-up is no system
 *    call; but each line is copied twice and each member switched to, where
 *    epoll appends the line to the output straight away.
 * 5. Every coroutine runs on one stack (--stack-kb, with a guard page below:
 *    an overflow faults). While one waits, its frames (a few hundred bytes)
 *    are copied aside, so an idle connection costs about what epoll's does,
 *    not a page of stack (--own-stacks gives each its own stack, to compare).
 *
 * Weakness: one core, and a long BURN (or any call that blocks) stalls every
 * other connection, as in the epoll design; and a waiting coroutine's locals
 * are not where they were, so nothing may point into another's stack. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/chat.h"
#include "core/coro.h"
#include "core/metrics.h"
#include "core/net.h"
#include "core/server.h"

static server_cfg_t config;
static int lfd;
static int accept_failed; /* the acceptor could not wait any more */

/* Serve one connection to its end: wait for what the session wants, let it
 * act (read and parse, answer, write), and go round. A BURN runs right here. */
static void serve(int fd, const server_cfg_t *cfg)
{
    session_t s;
    int w = SESS_READ;
    int64_t drain_end = 0; /* set once the server stops */
    session_init(&s, fd, &cfg->session);
    while (!(w & SESS_CLOSE)) {
        if (w & SESS_WORK) {
            session_work_run(&s);
            w = session_on_work_done(&s);
            continue;
        }
        if (server_stopping && !drain_end) {
            /* Answer what is in flight, then close (SERVER_DRAIN_MS at most). */
            drain_end = time_update() + SERVER_DRAIN_MS;
            w = session_shutdown(&s);
            continue;
        }
        switch (server_wait_coro(&s, w, drain_end)) { /* the scheduler's epoll */
        case SERVER_EV_NONE:
            break;
        case SERVER_EV_READABLE:
            w = session_on_readable(&s);
            break;
        case SERVER_EV_WRITABLE:
            w = session_on_writable(&s);
            break;
        case SERVER_EV_ERROR:
            w = session_on_error(&s);
            break;
        case SERVER_EV_TIMER:
            w = session_on_timer(&s);
            break;
        case SERVER_EV_CHAT: /* another coroutine's SAY woke it */
            w = session_on_chat(&s);
            break;
        default: /* drained, or the wait failed */
            w = SESS_CLOSE;
        }
    }
    session_close(&s);
}

/* A connection's coroutine. */
static void conn_main(void *arg)
{
    serve((int)(intptr_t)arg, &config);
}

/* Accept, and give each connection a coroutine of its own. */
static void acceptor(void *arg)
{
    (void)arg;
    int fd;
    while ((fd = server_accept_coro(lfd, &config)) >= 0) {
        if (coro_spawn(conn_main, (void *)(intptr_t)fd) < 0) {
            server_refuse(fd, "out of memory");
            metrics_conn(0);
        }
    }
    if (fd != -ECANCELED) {
        /* It cannot wait for connections: stop as SIGTERM would. */
        fprintf(stderr, "server-coro: accept: %s\n", strerror(-fd));
        accept_failed = 1;
        raise(SIGTERM);
    }
}

int main(int argc, char **argv)
{
    server_init(argc, argv, "coro", SERVER_OPT_STACK | SERVER_OPT_CORO, &config);
    if (!(config.session.chat = chat_new_tasks(coro_self, coro_wake))) {
        fprintf(stderr, "server-coro: out of memory\n");
        return 1;
    }
    lfd = server_listen(&config, NET_NONBLOCK);
    if (lfd < 0)
        return 1;
    int rc = coro_sched_init(config.stack_kb * 1024, config.own_stacks, server_stop_fd());
    if (rc == 0 && (rc = coro_spawn(acceptor, NULL)) < 0)
        coro_sched_run(); /* frees the scheduler: nothing to run */
    if (rc < 0) {
        fprintf(stderr, "server-coro: %s\n", strerror(-rc));
        return 1;
    }
    server_announce(&config, lfd);

    /* Until every coroutine has ended: the acceptor at the stop, each
     * connection once it has answered what it had in flight. */
    rc = coro_sched_run();
    if (rc < 0)
        fprintf(stderr, "server-coro: epoll_wait: %s\n", strerror(-rc));
    else
        chat_free(config.session.chat); /* every session has left it */
    return rc < 0 || accept_failed;
}
