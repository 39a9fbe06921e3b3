/* threads server - a thread per connection: the main thread accepts, and
 * each connection gets a thread of its own that serves it with blocking
 * waits, so a WAIT or a slow client only holds up its own thread.
 *
 * Simple code, and the kernel's scheduler does the multiplexing.
 * Weakness: every client costs a thread (a stack, --stack-kb, and a
 * scheduler entry); thousands of them mean memory, context switches and
 * kernel time growing with the client count, not with the work. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "core/metrics.h"
#include "core/server.h"

static server_cfg_t cfg;
static int live; /* connection threads running */

static void *serve(void *arg)
{
    server_serve_blocking((int)(intptr_t)arg, &cfg);
    __atomic_sub_fetch(&live, 1, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    server_init(argc, argv, "threads", SERVER_OPT_STACK, &cfg);
    int lfd = server_listen(&cfg, 0);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, cfg.stack_kb * 1024);
    server_announce(&cfg, lfd);

    int fd;
    while ((fd = server_accept_blocking(lfd, &cfg)) != -ECANCELED) {
        if (fd < 0)
            continue;
        pthread_t t;
        __atomic_add_fetch(&live, 1, __ATOMIC_RELAXED);
        if (pthread_create(&t, &attr, serve, (void *)(intptr_t)fd) != 0) {
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
