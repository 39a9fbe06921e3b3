/* chat: rooms of connections and the broadcast between them (the line
 * protocol's JOIN, SAY and LEAVE; session.c calls it, a design chooses how
 * lines reach a member owned by another thread or loop).
 *
 * A connection is in one room at a time. SAY sends "MSG <text>" to every
 * member of the sender's room, the sender included. A member whose unsent
 * output passes CHAT_OUT_LIMIT is cut: it leaves the room, gets
 * "ERR slow consumer" after what it was sent, and the connection closes
 * once that is written (or its idle timeout passes); the room goes on.
 *
 * Broadcast is where the designs differ, so the mode says what a delivery
 * costs:
 * - CHAT_ONE_LOOP (select, poll, epoll): every member lives on the caller's
 *   thread. The line goes straight into the member's output and wake(s)
 *   makes the loop write it (arm its write interest). No lock.
 * - CHAT_THREADS (threads): each member is served by its own thread,
 *   blocked in poll(). The rooms are under one lock; the line goes into the
 *   member's inbox under the member's lock and an eventfd of the member's
 *   (chat_wake_fd, which its poll() watches) rings when the inbox was empty.
 *   The member's thread moves the inbox to its output (chat_take).
 * - CHAT_LOOPS (the reactor, workers): members live on several event loops,
 *   each its own thread, and a member stays on its loop. A SAY delivers to
 *   the sender's loop's members as CHAT_ONE_LOOP does, and posts the line
 *   once to each other loop with members in the room (a copy, the rooms'
 *   lock, the loop's mailbox lock, and an eventfd write when the mailbox was
 *   empty); that loop delivers it to its own members (chat_loop_run). The
 *   cost is per loop, not per member: no lock is taken per member.
 * - CHAT_TASKS (coro): every member is a task (a coroutine) on the caller's
 *   thread, but its session cannot be reached while it waits (its frames
 *   are copied aside from the shared stack). The line goes into the
 *   member's inbox (the heap) and wake(its task) makes its scheduler
 *   run it, when the inbox was empty; it moves the inbox to its output
 *   itself (chat_take). No lock and no system call, but a second copy of
 *   each line and a switch per member. */
#ifndef CORE_CHAT_H
#define CORE_CHAT_H

#include <stddef.h>

#include "session.h"

#define CHAT_NAME_MAX  64          /* longest room name */
#define CHAT_OUT_LIMIT (256 << 10) /* unsent output past this cuts a member */

enum chat_mode { CHAT_ONE_LOOP, CHAT_THREADS, CHAT_LOOPS, CHAT_TASKS };

typedef struct chat chat_t;

/* Told, on s's own thread, that member s (never the sender) got lines in
 * its output (CHAT_ONE_LOOP, CHAT_LOOPS): make its loop write them. It
 * must not free s (the caller may be in the middle of another session's
 * event, or of a batch that still holds one for s). */
typedef void (*chat_wake_fn)(session_t *s, void *ctx);

/* The rooms, for the process's life (CHAT_ONE_LOOP or CHAT_THREADS). wake
 * is for CHAT_ONE_LOOP (NULL for CHAT_THREADS). Returns NULL when out of
 * memory. */
chat_t *chat_new(enum chat_mode mode, chat_wake_fn wake, void *ctx);

/* The rooms for tasks of the calling thread (CHAT_TASKS): a member's task
 * is self() at its JOIN; wake(task) is called, on this thread, when lines
 * start to wait in its inbox, and must make the task go to chat_take soon
 * (its wait returns, e.g. coro_wake). NULL when out of memory. */
chat_t *chat_new_tasks(void *(*self)(void), void (*wake)(void *task));

/* The rooms for `loops` event loops (CHAT_LOOPS), each watching its
 * chat_loop_fd and calling chat_loop_run on its thread when it is
 * readable; wake is called on the member's own loop. NULL when out of
 * memory or descriptors. */
chat_t *chat_new_loops(int loops, chat_wake_fn wake, void *ctx);

/* Tell the chat which loop (0..loops-1) the calling thread runs
 * (CHAT_LOOPS): sessions that join from it are that loop's. */
void chat_loop_bind(int loop);

/* The eventfd that becomes readable when posts wait for loop. */
int chat_loop_fd(const chat_t *c, int loop);

/* On loop's thread: deliver the lines posted to it to its members. */
void chat_loop_run(chat_t *c, int loop);

/* Free the rooms once no session uses them any more (all closed). */
void chat_free(chat_t *c);

/* s joins room name[0..len), leaving the one it was in. Returns the room's
 * members counting s, -ENAMETOOLONG, -ENOMEM, or -errno of the eventfd. */
int chat_join(chat_t *c, session_t *s, const char *name, size_t len);

/* Send "MSG <text>\n" to every member of s's room, s included (into its
 * output). Returns the members reached, or -ENOTCONN when s is in no room. */
int chat_say(chat_t *c, session_t *s, const char *text, size_t len);

/* s leaves its room, if any, and forgets the chat (session_close calls it). */
void chat_leave(session_t *s);

/* On s's own thread (CHAT_THREADS, CHAT_TASKS): move the lines waiting in its inbox to
 * its output, and cut it if it is too far behind. */
void chat_take(session_t *s);

/* The descriptor that becomes readable when lines wait for s (CHAT_THREADS,
 * while s is in a room), or -1. */
int chat_wake_fd(const session_t *s);

/* Lines wait in s's inbox, or s is to be cut (CHAT_TASKS): chat_take has
 * something to do. */
int chat_pending(const session_t *s);

#endif
