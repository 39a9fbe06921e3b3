/* threads server - a thread per connection: the main thread accepts, and
 * each connection gets a thread of its own that serves it with blocking
 * waits, so a WAIT or a slow client only holds up its own thread.
 *
 * Simple code, and the kernel's scheduler does the multiplexing.
 * The chat's broadcast crosses threads: a SAY takes the rooms' lock, and for
 * each member its inbox's lock, appends the MSG there and rings the member's
 * eventfd (a write(2)), which its thread's poll() watches beside its socket;
 * that thread wakes (a context switch) and moves the lines to its output.
 * Weakness: every client costs a thread (a stack, --stack-kb, and a
 * scheduler entry); thousands of them mean memory, context switches and
 * kernel time growing with the client count, not with the work. And a
 * thread that never blocks (its client pipelines) keeps the CPU for a whole
 * slice, then waits for everyone else's: a tail of tens of slices
 * (docs/LAB.md, threads-tail). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "core/chat.h"
#include "core/metrics.h"
#include "core/server.h"

static server_cfg_t config;
static int live; /* connection threads running */

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
        switch (server_wait_one(&s, w, drain_end)) { /* poll() on this socket alone */
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
        case SERVER_EV_CHAT: /* another thread's SAY rang its eventfd */
            w = session_on_chat(&s);
            break;
        default: /* drained, or poll failed */
            w = SESS_CLOSE;
        }
    }
    session_close(&s);
}

/* A connection's thread. */
static void *conn_main(void *arg)
{
    serve((int)(intptr_t)arg, &config);
    __atomic_sub_fetch(&live, 1, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    server_init(argc, argv, "threads", SERVER_OPT_STACK, &config);
    if (!(config.session.chat = chat_new(CHAT_THREADS, NULL, NULL))) {
        fprintf(stderr, "server-threads: out of memory\n");
        return 1;
    }
    int lfd = server_listen(&config, 0);
    if (lfd < 0)
        return 1;
    pthread_attr_t attr;
    /* Cannot fail: the stack size is a valid one (--stack-kb >= 16). */
    (void)pthread_attr_init(&attr);
    (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    (void)pthread_attr_setstacksize(&attr, config.stack_kb * 1024);
    server_announce(&config, lfd);

    /* Accept, and give each connection a thread of its own. */
    int fd;
    while ((fd = server_accept_blocking(lfd, &config)) != -ECANCELED) {
        if (fd < 0)
            continue;
        pthread_t t;
        __atomic_add_fetch(&live, 1, __ATOMIC_RELAXED);
        if (pthread_create(&t, &attr, conn_main, (void *)(intptr_t)fd) != 0) {
            __atomic_sub_fetch(&live, 1, __ATOMIC_RELAXED);
            server_refuse(fd, "out of threads");
            metrics_conn(0);
        }
    }
    /* Stopping: each thread answers what it has in flight and ends. */
    int64_t until = time_update() + SERVER_DRAIN_MS;
    while (__atomic_load_n(&live, __ATOMIC_RELAXED) > 0 && time_update() < until)
        usleep(10000);
    return 0;
}
