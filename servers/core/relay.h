/* relay: the proxy design's machinery (servers/proxy.c shows its model).
 *
 * A relay loop belongs to one thread, which owns its epoll descriptor and
 * its listening socket and hands the relay what happens: a new connection
 * (relay_accept), an event on a socket the relay registered (relay_event),
 * a wake-up (relay_timers), the stop (relay_stop). Per loop and upstream,
 * a pool of idle keep-alive connections; a client borrows one when a
 * request arrives and gives it back once every answer is through. Bytes
 * move both ways with backpressure (64 KiB per buffer): a slow client slows
 * its upstream's reading, not the proxy's memory. */
#ifndef CORE_RELAY_H
#define CORE_RELAY_H

#include <stdint.h>

#include "server.h"
#include "timer.h"

typedef struct relay_loop {
    int ep;       /* the loop's epoll descriptor: set by its thread */
    int stopping; /* set by relay_stop: nothing goes back to the pools */
    timers_t timers;
    struct pool *pools; /* one per upstream */
    unsigned rr;        /* round robin */
    uint64_t clients, aborts;
    struct end *dead;   /* closed this batch, freed after it */
    struct conn *conns; /* every client, for the stop */
} relay_loop_t;

/* Resolve cfg->upstreams (the caller checked there is one) and make n
 * loops, their pools empty, their `ep` for the caller to set; adds the
 * pools' figures to /metrics. Returns the loops, or NULL after printing
 * why (an upstream that does not resolve, out of memory). */
relay_loop_t *relay_init(const server_cfg_t *cfg, int n);

/* Take a connection accepted on L's thread (server_accept): register it
 * with L->ep and relay its requests. On failure it is closed and counted. */
void relay_accept(relay_loop_t *L, int fd);

/* epoll reported `events` for ptr, a socket the relay registered. */
void relay_event(relay_loop_t *L, void *ptr, unsigned events);

/* Is ptr, a socket the relay registered, a client with nothing in flight:
 * would its event start a request? Such an event may be served ahead of
 * older ones (servers/proxy.c's catch_up). */
int relay_starts(const void *ptr);

/* How long L may wait (ms, -1 = forever): until its next deadline. */
int relay_timeout(const relay_loop_t *L);

/* After each wake-up: hand every deadline that passed (timeouts, idle
 * pooled connections) and free what closed. */
void relay_timers(relay_loop_t *L);

/* Client connections open on L. */
uint64_t relay_clients(const relay_loop_t *L);

/* The server stops: idle pooled connections close, no client starts
 * another request, and each closes once what is in flight is answered. */
void relay_stop(relay_loop_t *L);

/* After the loop: close and free whatever is left. */
void relay_end(relay_loop_t *L);

#endif
