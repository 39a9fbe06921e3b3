/* Unit tests of the server's accepting: --max-conns holds when several
 * threads accept from one listener at once (the reactor's loops do), and the
 * default cap follows the descriptor limit. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>

#include "../lib/tlib.h"
#include "core/metrics.h"
#include "core/net.h"
#include "core/server.h"

enum { ACCEPTORS = 8, PENDING = 64, MAX = 16, ROUNDS = 30 };

struct acceptor {
    int lfd;
    const server_cfg_t *cfg;
    pthread_barrier_t *start;
    int fds[PENDING], n; /* admitted, kept open */
};

static void *acceptor_main(void *arg)
{
    struct acceptor *a = arg;
    pthread_barrier_wait(a->start);
    for (;;) {
        int fd = server_accept(a->lfd, a->cfg);
        if (fd == -EAGAIN)
            break;
        if (fd >= 0)
            a->fds[a->n++] = fd;
    }
    return NULL;
}

/* Eight threads drain one backlog of 64 connections with --max-conns 16:
 * never more than 16 admitted, in any round. */
static void test_max_conns_across_threads(void **state)
{
    (void)state;
    char err[256];
    int lfd = net_listen("127.0.0.1", 0, 256, NET_NONBLOCK, err, sizeof err);
    assert_true(lfd >= 0);
    int port = net_local_port(lfd);
    server_cfg_t cfg = {.max_conns = MAX};
    for (int round = 0; round < ROUNDS; round++) {
        int clients[PENDING];
        for (int i = 0; i < PENDING; i++) {
            clients[i] = tconn_open(port); /* completes in the backlog */
            assert_true(clients[i] >= 0);
        }
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, ACCEPTORS);
        struct acceptor acc[ACCEPTORS];
        pthread_t tid[ACCEPTORS];
        for (int i = 0; i < ACCEPTORS; i++) {
            acc[i] = (struct acceptor){.lfd = lfd, .cfg = &cfg, .start = &start};
            assert_int_equal(pthread_create(&tid[i], NULL, acceptor_main, &acc[i]), 0);
        }
        int admitted = 0;
        for (int i = 0; i < ACCEPTORS; i++) {
            pthread_join(tid[i], NULL);
            admitted += acc[i].n;
        }
        pthread_barrier_destroy(&start);
        if (admitted != MAX)
            fail_msg("round %d: %d connections admitted with --max-conns %d", round, admitted, MAX);
        assert_int_equal(metrics_open_conns(), MAX);
        for (int i = 0; i < ACCEPTORS; i++)
            for (int j = 0; j < acc[i].n; j++) {
                close(acc[i].fds[j]);
                metrics_conn(0);
            }
        for (int i = 0; i < PENDING; i++)
            close(clients[i]);
    }
    assert_int_equal(metrics_open_conns(), 0);
    close(lfd);
}

/* Without --max-conns the cap is the descriptor limit less the reserve: the
 * connection past it is refused, not left to fail in accept. */
static void test_default_cap(void **state)
{
    (void)state;
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    /* Both limits, since server_process_init raises the soft one to the
     * hard one (this test runs last: the process keeps the lower limit). */
    rl.rlim_cur = rl.rlim_max = SERVER_FD_RESERVE + 24; /* the cap: 24 connections */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    server_process_init();
    char err[256];
    int lfd = net_listen("127.0.0.1", 0, 256, NET_NONBLOCK, err, sizeof err);
    assert_true(lfd >= 0);
    int port = net_local_port(lfd), clients[30], fds[30], n = 0;
    for (int i = 0; i < 30; i++)
        assert_true((clients[i] = tconn_open(port)) >= 0);
    server_cfg_t cfg = {0};
    int fd;
    while ((fd = server_accept(lfd, &cfg)) != -EAGAIN)
        if (fd >= 0)
            fds[n++] = fd;
    assert_int_equal(n, 24);
    for (int i = 0; i < n; i++) {
        close(fds[i]);
        metrics_conn(0);
    }
    for (int i = 0; i < 30; i++)
        close(clients[i]);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_conns_across_threads),
        cmocka_unit_test(test_default_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
