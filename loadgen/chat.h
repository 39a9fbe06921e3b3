/* chat: loadgen's --chat ROOMS:MEMBERS, the broadcast's load (the servers'
 * JOIN, SAY and LEAVE, servers/core/chat.h).
 *
 * ROOMS*MEMBERS connections, MEMBERS in each room. In each room one member
 * at a time (in turn) says "SAY <round> <send time>"; the round ends when
 * every member, the sender included, has read its MSG, and the next begins
 * (a closed loop per room, rooms side by side). Measured: the delivery
 * latency (from the SAY's send to each member's read of the MSG), the
 * fan-out rate (MSGs delivered per second) and the SAYs per second; with
 * --server-pid the server's CPU per delivery. */
#ifndef LOADGEN_CHAT_H
#define LOADGEN_CHAT_H

#include "opts.h"

/* Run the chat load described by o (o->chat_rooms > 0) and print the
 * results (and --json). Returns the exit status: 0, or 1 when it could not
 * connect or join, or when a round never completed. */
int chat_main(const lg_opts_t *o);

#endif
