/* reactor server - one event loop per core, and a pool of workers for the
 * CPU-heavy requests.
 *
 * The model, step by step (the code: servers/core/reactor.c, the runtime
 * the sandboxed server and the incrementor reuse with their own requests):
 *   - reactor_run starts --threads loop threads and --workers workers;
 *   - each loop thread (loop_main) is the epoll design (servers/epoll.c,
 *     the same server_loop_* helpers) with a listening socket of its own on
 *     the shared port (SO_REUSEPORT): the kernel spreads new connections
 *     across the loops, which share nothing on the request path;
 *   - a BURN long enough to hold a loop up (REACTOR_OFFLOAD_MIN steps) is
 *     queued for a worker instead (apply -> submit), which runs it off the
 *     loop (worker_main), so PINGs on that loop stay fast;
 *   - the answer's way back: the worker posts to the loop that owns the
 *     connection (reactor_post) and rings its wake descriptor; the loop runs
 *     the posts after its current batch of events (run_posts), and the
 *     session answers and goes on;
 *   - the chat's broadcast is posts between loops too: a SAY delivers to its
 *     own loop's members of the room, and posts the line once to each other
 *     loop with members there (its mailbox and eventfd), which delivers it
 *     to its own (core/chat.h, CHAT_LOOPS): a hand-off per loop, not a lock
 *     per member.
 * Weakness: more moving parts (hand-offs, a queue that can fill up: then
 * "ERR server busy"); a connection stays on one loop, so an unlucky spread
 * of busy clients can load one core more than another. */
#include "core/reactor.h"

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "reactor", SERVER_OPT_THREADS | SERVER_OPT_WORKERS, &cfg);
    return reactor_run(&cfg, NULL);
}
