/* Unit tests of the chat (core/chat.c through the session's JOIN, SAY and
 * LEAVE): rooms, the broadcast to every member sender included, moving
 * between rooms, the slow consumer's cut while the room goes on, in every
 * mode (one loop: lines into the outputs, wake to arm the write; threads:
 * lines into inboxes, an eventfd, chat_take on the owner's side; loops:
 * posts to a mailbox; tasks: inboxes, the owner's task woken).
 *
 * Sessions are driven over socketpairs, as an event loop would drive them,
 * all on this thread: what crosses threads in CHAT_THREADS is the inbox and
 * its eventfd, which work the same from one thread. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/chat.h"
#include "core/session.h"

#define N 4

static session_cfg_t cfg;
static session_t ss[N];
static int cfd[N];   /* the clients' ends, non-blocking */
static int woken[N]; /* wake() calls per session */

static void wake(session_t *s, void *ctx)
{
    (void)ctx;
    woken[s - ss]++;
}

static void open_all(chat_t *c)
{
    session_cfg_default(&cfg);
    cfg.chat = c;
    memset(woken, 0, sizeof woken);
    for (int i = 0; i < N; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        cfd[i] = sv[0];
        session_init(&ss[i], sv[1], &cfg);
    }
}

static void close_all(void)
{
    for (int i = 0; i < N; i++) {
        session_close(&ss[i]);
        close(cfd[i]);
    }
    chat_free(cfg.chat);
}

/* Client i sends line; its session reads and answers. Returns the wants. */
static int say(int i, const char *line)
{
    size_t n = strlen(line);
    assert_int_equal(send(cfd[i], line, n, MSG_NOSIGNAL), (ssize_t)n);
    return session_on_readable(&ss[i]);
}

/* What client i has received so far (static buffer). */
static const char *got(int i)
{
    static char buf[1 << 16];
    ssize_t r = recv(cfd[i], buf, sizeof buf - 1, 0);
    if (r < 0) {
        assert_int_equal(errno, EAGAIN);
        r = 0;
    }
    buf[r] = '\0';
    return buf;
}

static void test_rooms_one_loop(void **state)
{
    (void)state;
    chat_t *c = chat_new(CHAT_ONE_LOOP, wake, NULL);
    assert_non_null(c);
    open_all(c);
    say(0, "SAY hi\n");
    assert_string_equal(got(0), "ERR not in a room\n");
    say(0, "JOIN lobby\n");
    assert_string_equal(got(0), "JOINED 1\n");
    say(1, "JOIN lobby\n");
    assert_string_equal(got(1), "JOINED 2\n");
    say(2, "JOIN den\n");
    assert_string_equal(got(2), "JOINED 1\n");

    /* To every member, the sender included; not to another room. */
    say(0, "SAY hello, world\n");
    assert_string_equal(got(0), "MSG hello, world\n");
    assert_int_equal(woken[1], 1);
    assert_int_equal(woken[0] + woken[2], 0);
    assert_string_equal(got(1), ""); /* in its output until its loop writes */
    session_on_writable(&ss[1]);
    assert_string_equal(got(1), "MSG hello, world\n");
    assert_string_equal(got(2), "");

    /* JOIN again moves the connection. */
    say(1, "JOIN den\n");
    assert_string_equal(got(1), "JOINED 2\n");
    say(0, "SAY alone\n");
    assert_string_equal(got(0), "MSG alone\n");
    assert_int_equal(woken[1], 1);
    say(2, "SAY x\n");
    assert_string_equal(got(2), "MSG x\n");
    session_on_writable(&ss[1]);
    assert_string_equal(got(1), "MSG x\n");

    say(1, "LEAVE\n");
    assert_string_equal(got(1), "LEFT\n");
    say(1, "SAY y\n");
    assert_string_equal(got(1), "ERR not in a room\n");
    say(2, "JOIN den\n");
    assert_string_equal(got(2), "JOINED 1\n");
    close_all();
}

/* A SAY of 4,000 bytes of c. */
static void big_say(char line[4006], char c)
{
    memcpy(line, "SAY ", 4);
    memset(line + 4, c, 4000);
    strcpy(line + 4004, "\n");
}

/* Member 1 never reads: once its output passes the limit it is cut, told
 * why, and the room goes on without it. */
static void test_slow_consumer_one_loop(void **state)
{
    (void)state;
    chat_t *c = chat_new(CHAT_ONE_LOOP, wake, NULL);
    open_all(c);
    say(0, "JOIN r\n");
    got(0);
    say(1, "JOIN r\n");
    got(1);
    char line[4000 + 6];
    big_say(line, 'x');
    int i = 0;
    while (ss[1].closing == 0) {
        assert_true(i++ < 1000);
        assert_false(say(0, line) & SESS_CLOSE);
        assert_true(strlen(got(0)) == 4005); /* the sender keeps up */
    }
    assert_true(buf_used(&ss[1].out) > CHAT_OUT_LIMIT);
    assert_memory_equal(buf_head(&ss[1].out) + buf_used(&ss[1].out) - 18, "ERR slow consumer\n",
                        18);
    say(0, "JOIN r\n");
    assert_string_equal(got(0), "JOINED 1\n");
    say(0, "SAY still here\n");
    assert_string_equal(got(0), "MSG still here\n");
    close_all();
}

/* A design that moves the bytes itself (io_uring) takes the output while
 * its send is in flight: that output is still unsent, and counts toward
 * the limit (it was not: such a member held twice the limit before its cut). */
static void test_slow_consumer_output_taken(void **state)
{
    (void)state;
    chat_t *c = chat_new(CHAT_ONE_LOOP, wake, NULL);
    open_all(c);
    cfg.external_io = 1;
    say(0, "JOIN r\n");
    got(0);
    say(1, "JOIN r\n");
    buf_t tx = {0};
    assert_true(session_take_output(&ss[1], &tx) > 0); /* JOINED, on its way */
    buf_free(&tx);
    char line[4000 + 6];
    big_say(line, 'x');
    /* 3/4 of the limit, taken by the design's send that never completes. */
    while (buf_used(&ss[1].out) < CHAT_OUT_LIMIT / 4 * 3) {
        say(0, line);
        got(0);
    }
    assert_true(session_take_output(&ss[1], &tx) > 0);
    int i = 0;
    while (ss[1].closing == 0) {
        assert_true(i++ < 1000);
        say(0, line);
        got(0);
    }
    /* Cut once out and the send in flight together pass the limit. */
    assert_true(buf_used(&ss[1].out) < CHAT_OUT_LIMIT / 2);
    assert_true(buf_used(&ss[1].out) + buf_used(&tx) <= CHAT_OUT_LIMIT + 4005 + 18);
    buf_free(&tx);
    ss[1].lent = 0;
    close_all();
    cfg.external_io = 0;
}

static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

/* Keep the last 18 bytes of a stream in tail, given its next piece g. */
static void keep_tail(char tail[18], const char *g)
{
    size_t n = strlen(g);
    if (n >= 18) {
        memcpy(tail, g + n - 18, 18);
    } else if (n) {
        memmove(tail, tail + n, 18 - n);
        memcpy(tail + 18 - n, g, n);
    }
}

/* Member 1 was cut (w: its wants then): it is written what it was sent,
 * then why, then the connection ends. */
static void expect_cut(int w)
{
    char tail[18] = {0};
    for (int i = 0; !(w & SESS_CLOSE); i++) {
        assert_true(i < 10000);
        keep_tail(tail, got(1));
        w = session_on_writable(&ss[1]);
    }
    keep_tail(tail, got(1));
    assert_memory_equal(tail, "ERR slow consumer\n", 18);
}

static void test_threads_mode(void **state)
{
    (void)state;
    chat_t *c = chat_new(CHAT_THREADS, NULL, NULL);
    open_all(c);
    assert_int_equal(chat_wake_fd(&ss[1]), -1);
    say(0, "JOIN r\n");
    got(0);
    say(1, "JOIN r\n");
    got(1);
    assert_true(chat_wake_fd(&ss[1]) >= 0);
    assert_false(readable(chat_wake_fd(&ss[1])));
    say(0, "SAY one\n");
    say(0, "SAY two\n");
    assert_string_equal(got(0), "MSG one\nMSG two\n");
    assert_true(readable(chat_wake_fd(&ss[1])));
    session_on_chat(&ss[1]);
    assert_false(readable(chat_wake_fd(&ss[1])));
    assert_string_equal(got(1), "MSG one\nMSG two\n");

    /* Member 1 stops taking its lines: its inbox passes the limit. */
    char line[4000 + 6];
    big_say(line, 'y');
    for (int i = 0; i < CHAT_OUT_LIMIT / 4000 + 2; i++) {
        say(0, line);
        got(0);
    }
    int w = session_on_chat(&ss[1]);
    assert_int_equal(ss[1].closing, 1);
    expect_cut(w);
    say(0, "JOIN r\n");
    assert_string_equal(got(0), "JOINED 1\n");
    close_all();
}

/* Tasks (coro): the task that is running, and who was woken. */
static int running;
static void *self_task(void)
{
    return &ss[running];
}

static void wake_task(void *task)
{
    woken[(session_t *)task - ss]++;
}

/* Tasks: a SAY never touches another member's session (its frames are put
 * aside): the line waits in its inbox, its task is woken once, and it takes
 * the lines itself when it runs. */
static void test_tasks_mode(void **state)
{
    (void)state;
    chat_t *c = chat_new_tasks(self_task, wake_task);
    open_all(c);
    for (running = 0; running < 3; running++) {
        say(running, "JOIN r\n");
        got(running);
    }
    running = 0;
    say(0, "SAY one\n");
    say(0, "SAY two\n");
    assert_string_equal(got(0), "MSG one\nMSG two\n");
    assert_int_equal(woken[0], 0); /* the sender runs already */
    assert_int_equal(woken[1], 1); /* once, while its inbox holds lines */
    assert_int_equal(woken[2], 1);
    assert_string_equal(got(1), ""); /* nothing in its output before it runs */
    assert_true(chat_pending(&ss[1]));
    running = 1;
    session_on_chat(&ss[1]);
    assert_false(chat_pending(&ss[1]));
    assert_string_equal(got(1), "MSG one\nMSG two\n");
    running = 0;
    say(0, "SAY three\n");
    assert_int_equal(woken[1], 2); /* its inbox was empty again */
    assert_int_equal(woken[2], 1);
    running = 2;
    session_on_chat(&ss[2]);
    assert_string_equal(got(2), "MSG one\nMSG two\nMSG three\n");

    /* Member 1 does not run: its inbox passes the limit, and it is cut
     * when it does. */
    running = 0;
    char line[4000 + 6];
    big_say(line, 'y');
    for (int i = 0; i < CHAT_OUT_LIMIT / 4000 + 2; i++) {
        say(0, line);
        got(0);
        running = 2;
        session_on_chat(&ss[2]);
        got(2);
        running = 0;
    }
    assert_true(chat_pending(&ss[1]));
    running = 1;
    int w = session_on_chat(&ss[1]);
    assert_int_equal(ss[1].closing, 1);
    assert_false(chat_pending(&ss[1]));
    expect_cut(w);
    /* The room goes on without it. */
    running = 0;
    say(0, "JOIN r\n");
    assert_string_equal(got(0), "JOINED 2\n");
    close_all();
}

/* Two loops: a SAY reaches the other loop's members only through its
 * mailbox, once that loop runs it. */
static void test_loops_mode(void **state)
{
    (void)state;
    chat_t *c = chat_new_loops(2, wake, NULL);
    assert_non_null(c);
    open_all(c);
    chat_loop_bind(0);
    say(0, "JOIN r\n");
    assert_string_equal(got(0), "JOINED 1\n");
    chat_loop_bind(1);
    say(1, "JOIN r\n");
    assert_string_equal(got(1), "JOINED 2\n");
    say(2, "JOIN r\n");
    assert_string_equal(got(2), "JOINED 3\n");
    chat_loop_bind(0);
    say(0, "SAY across\n");
    assert_string_equal(got(0), "MSG across\n");
    assert_int_equal(woken[1] + woken[2], 0);
    assert_true(readable(chat_loop_fd(c, 1)));
    assert_false(readable(chat_loop_fd(c, 0)));
    chat_loop_bind(1);
    chat_loop_run(c, 1);
    assert_false(readable(chat_loop_fd(c, 1)));
    assert_int_equal(woken[1], 1);
    assert_int_equal(woken[2], 1);
    session_on_writable(&ss[1]);
    session_on_writable(&ss[2]);
    assert_string_equal(got(1), "MSG across\n");
    assert_string_equal(got(2), "MSG across\n");
    /* The room outlives a post on its way when its members leave. */
    chat_loop_bind(0);
    say(0, "SAY last\n");
    got(0);
    say(0, "LEAVE\n");
    chat_loop_bind(1);
    say(1, "LEAVE\n");
    say(2, "LEAVE\n");
    chat_loop_run(c, 1);
    assert_string_equal(got(1), "LEFT\n");
    close_all();
}

static void test_no_chat(void **state)
{
    (void)state;
    open_all(NULL);
    say(0, "JOIN r\n");
    assert_string_equal(got(0), "ERR chat not supported by this server\n");
    say(0, "SAY r\n");
    assert_string_equal(got(0), "ERR chat not supported by this server\n");
    say(0, "JOIN\n");
    assert_string_equal(got(0), "ERR missing room\n");
    close_all();
}

/* Lines waiting in an inbox when its member moves, leaves or says come
 * first, as on one loop: a member never sees its old room's lines after
 * JOINED, nor loses them at LEAVE, nor sees its own line before others'
 * posted earlier. */
static void test_inbox_before_move(void **state)
{
    (void)state;
    enum chat_mode modes[] = {CHAT_THREADS, CHAT_TASKS};
    for (size_t k = 0; k < 2; k++) {
        chat_t *c = modes[k] == CHAT_THREADS ? chat_new(CHAT_THREADS, NULL, NULL)
                                             : chat_new_tasks(self_task, wake_task);
        open_all(c);
        running = 0;
        say(0, "JOIN a\n");
        got(0);
        running = 1;
        say(1, "JOIN a\n");
        got(1);
        running = 0;
        say(0, "SAY old\n");
        got(0);
        running = 1;
        say(1, "JOIN b\n"); /* before it took "old" */
        assert_string_equal(got(1), "MSG old\nJOINED 1\n");
        running = 0;
        say(0, "SAY bye\n");
        got(0);
        assert_string_equal(got(1), ""); /* room a is not its room any more */
        running = 2;
        say(2, "JOIN b\n");
        got(2);
        say(2, "SAY first\n");
        got(2);
        running = 1;
        say(1, "SAY second\n"); /* its own line after the one posted to it */
        assert_string_equal(got(1), "MSG first\nMSG second\n");
        running = 2;
        session_on_chat(&ss[2]);
        assert_string_equal(got(2), "MSG second\n");
        say(2, "SAY last\n");
        got(2);
        running = 1;
        say(1, "LEAVE\n"); /* before it took "last" */
        assert_string_equal(got(1), "MSG last\nLEFT\n");
        close_all();
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rooms_one_loop),
        cmocka_unit_test(test_slow_consumer_one_loop),
        cmocka_unit_test(test_threads_mode),
        cmocka_unit_test(test_loops_mode),
        cmocka_unit_test(test_tasks_mode),
        cmocka_unit_test(test_no_chat),
        cmocka_unit_test(test_slow_consumer_output_taken),
        cmocka_unit_test(test_inbox_before_move),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
