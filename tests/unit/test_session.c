/* Unit tests of a session between requests: what a burst made it allocate
 * goes back once the burst is answered, so an idle keep-alive connection
 * costs what a new one does, whatever it went through (the soak saw a
 * server's memory creep up with the bursts of its long-lived connections).
 * And of its sending: one wake-up sends a share, not all a socket takes.
 *
 * The session is driven the way an event loop drives it, over a socketpair:
 * the client writes and reads without blocking, the session is called when
 * poll() says its socket is ready, and every wait is bounded. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "../lib/tlib.h"
#include "core/session.h"

#define KEEP   (32 << 10)  /* what an idle session may keep per buffer (BUF_KEEP) */
#define BUDGET (256 << 10) /* what a session sends per wake-up at most (WRITE_BUDGET) */
#define T_MS   5000        /* bound of each exchange */

struct pair {
    int cfd; /* the client's end, non-blocking */
    session_t s;
    session_cfg_t cfg;
    int wants;
};

static void pair_open(struct pair *p)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    p->cfd = sv[0];
    session_cfg_default(&p->cfg);
    session_init(&p->s, sv[1], &p->cfg);
    p->wants = SESS_READ;
}

static void pair_close(struct pair *p)
{
    session_close(&p->s);
    close(p->cfd);
}

/* Send all of req (n bytes) and read `want` bytes of answers into a
 * malloc'd buffer, calling the session whenever its socket is ready.
 * `hold` bytes of answers pile up unread first (the client is slow). */
static char *exchange(struct pair *p, const char *req, size_t n, size_t want, size_t hold)
{
    char *got = malloc(want + 1);
    assert_non_null(got);
    size_t sent = 0, have = 0;
    long long end = tnow_ms() + T_MS;
    while (have < want) {
        assert_true(tnow_ms() < end);
        assert_false(p->wants & (SESS_CLOSE | SESS_GONE | SESS_WORK));
        if (sent < n) {
            ssize_t w = send(p->cfd, req + sent, n - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else
                assert_true(errno == EAGAIN);
        }
        /* The slow client reads only once the server has stopped taking
         * requests (its output is full) or has taken them all. */
        int reading = hold == 0 || sent == n || !(p->wants & SESS_READ);
        if (reading) {
            ssize_t r = recv(p->cfd, got + have, want - have, 0);
            if (r > 0)
                have += (size_t)r;
            else
                assert_true(r < 0 && errno == EAGAIN);
            hold = 0;
        }
        struct pollfd pf = {p->s.fd,
                            (short)(((p->wants & SESS_READ) ? POLLIN : 0) |
                                    ((p->wants & SESS_WRITE) ? POLLOUT : 0)),
                            0};
        if (poll(&pf, 1, 1) <= 0)
            continue;
        if (pf.revents & POLLIN)
            p->wants = session_on_readable(&p->s);
        else if (pf.revents & POLLOUT)
            p->wants = session_on_writable(&p->s);
    }
    got[want] = '\0';
    return got;
}

/* n copies of s, concatenated. */
static char *repeat(const char *s, size_t n, size_t *len)
{
    size_t one = strlen(s);
    char *r = malloc(one * n + 1);
    assert_non_null(r);
    for (size_t i = 0; i < n; i++)
        memcpy(r + i * one, s, one);
    r[one * n] = '\0';
    *len = one * n;
    return r;
}

/* An extension answering /canned with session_respond_canned and /plain
 * with session_respond, alike otherwise. */
static const char canned_body[] = "{\"ok\":true}\n";

static int canned_ext(session_t *s, const http_request_t *req, const char *body, size_t len,
                      void *ctx)
{
    (void)body;
    (void)len;
    if (req->path_len == 7 && memcmp(req->path, "/canned", 7) == 0)
        session_respond_canned(s, ctx);
    else
        session_respond(s, 200, "application/json", canned_body, sizeof canned_body - 1);
    return 1;
}

/* A canned answer is, byte for byte, what session_respond sends: its bytes
 * on keep-alive HTTP/1.1, and the answer built for HTTP/1.0 (a Connection
 * field) and HEAD (no body). */
static void test_canned_answer(void **state)
{
    (void)state;
    static session_canned_t c;
    assert_int_equal(
        session_canned_init(&c, 200, "application/json", canned_body, sizeof canned_body - 1), 0);
    static const struct {
        const char *req, *want;
    } cases[] = {
        {"GET %s HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
         "{\"ok\":true}\n"},
        {"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
         "Connection: keep-alive\r\n\r\n{\"ok\":true}\n"},
        {"HEAD %s HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        for (int canned = 0; canned < 2; canned++) {
            struct pair p;
            pair_open(&p);
            p.cfg.ext = canned_ext;
            p.cfg.ext_ctx = &c;
            char req[128];
            int n = snprintf(req, sizeof req, cases[i].req, canned ? "/canned" : "/plain");
            char *got = exchange(&p, req, (size_t)n, strlen(cases[i].want), 0);
            assert_string_equal(got, cases[i].want);
            free(got);
            pair_close(&p);
        }
    }
    /* Too long for its bytes: refused, not cut. */
    static char big[sizeof c.bytes];
    assert_int_equal(session_canned_init(&c, 200, NULL, big, sizeof big), -E2BIG);
}

/* A large request body grows the input buffer to hold it. */
static void test_large_body_given_back(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p);
    size_t blen = 200 << 10;
    char head[128];
    int hl = snprintf(head, sizeof head,
                      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", blen);
    char *req = malloc((size_t)hl + blen);
    assert_non_null(req);
    memcpy(req, head, (size_t)hl);
    memset(req + hl, 'b', blen);
    /* Its answer (405) comes once the whole body is in. */
    char *got = exchange(&p, req, (size_t)hl + blen, 12, 0);
    assert_memory_equal(got, "HTTP/1.1 405", 12);
    free(got);
    print_message("after a %zu KB body: input buffer %zu bytes, output %zu\n", blen >> 10,
                  p.s.in.cap, p.s.out.cap);
    assert_true(p.s.in.cap <= KEEP);
    assert_true(p.s.out.cap <= KEEP);
    free(req);
    pair_close(&p);
}

/* Answers that pile up behind a client that does not read grow the output
 * buffer (up to OUT_HIGH); once it has read them all, they are gone. */
static void test_piled_answers_given_back(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p);
    size_t n, count = 100000;
    char *req = repeat("PING\n", count, &n);
    char *got = exchange(&p, req, n, 5 * count, 5 * count);
    assert_memory_equal(got + 5 * (count - 1), "PONG\n", 5);
    print_message("after %zu pipelined PINGs read late: input buffer %zu bytes, output %zu\n",
                  count, p.s.in.cap, p.s.out.cap);
    assert_true(p.s.in.cap <= KEEP);
    assert_true(p.s.out.cap <= KEEP);
    free(got);
    free(req);
    pair_close(&p);
}

/* A steady pipelined client is not made to allocate on every batch: a
 * buffer within KEEP stays. */
static void test_small_buffers_kept(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p);
    size_t n;
    char *req = repeat("PING\n", 16, &n);
    free(exchange(&p, req, n, 5 * 16, 0));
    char *in = p.s.in.data, *out = p.s.out.data;
    assert_non_null(in);
    assert_non_null(out);
    free(exchange(&p, req, n, 5 * 16, 0));
    assert_ptr_equal(p.s.in.data, in);
    assert_ptr_equal(p.s.out.data, out);
    free(req);
    pair_close(&p);
}

/* One wake-up sends at most BUDGET, though the socket would take more: a
 * client whose window is wide does not take a whole long answer in one
 * turn while the others wait (session.c, WRITE_BUDGET). */
static void test_write_budget(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p);
    /* Room for more than the budget: as much as the system allows. */
    int want = 4 << 20, room = 0;
    socklen_t len = sizeof room;
    assert_int_equal(setsockopt(p.s.fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want), 0);
    assert_int_equal(getsockopt(p.s.fd, SOL_SOCKET, SO_SNDBUF, &room, &len), 0);
    if (room < 3 * BUDGET / 2) {
        print_message("SO_SNDBUF %d: too small to hold more than the budget\n", room);
        skip();
    }
    const char req[] = "STREAM 8000000\n";
    assert_int_equal(send(p.cfd, req, sizeof req - 1, 0), (ssize_t)(sizeof req - 1));
    struct pollfd pf = {p.s.fd, POLLIN, 0};
    assert_int_equal(poll(&pf, 1, T_MS), 1);
    p.wants = session_on_readable(&p.s); /* the STREAM starts, and its bytes go */
    assert_true(p.wants & SESS_WRITE);   /* more to send */
    int queued = 0;
    assert_int_equal(ioctl(p.cfd, FIONREAD, &queued), 0);
    print_message("one wake-up sent %d bytes (socket room %d)\n", queued, room);
    assert_in_range(queued, BUDGET / 2, BUDGET);
    /* The next wake-up sends the next share. */
    pf.events = POLLOUT;
    assert_int_equal(poll(&pf, 1, T_MS), 1);
    p.wants = session_on_writable(&p.s);
    int more = 0;
    assert_int_equal(ioctl(p.cfd, FIONREAD, &more), 0);
    assert_in_range(more - queued, 1, BUDGET);
    pair_close(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canned_answer),
        cmocka_unit_test(test_large_body_given_back),
        cmocka_unit_test(test_piled_answers_given_back),
        cmocka_unit_test(test_small_buffers_kept),
        cmocka_unit_test(test_write_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
