/* reactor server - one event loop per core, and a pool of workers for the
 * CPU-heavy requests.
 *
 * Each loop thread is the epoll design (servers/epoll.c) with its own
 * listening socket on the shared port (SO_REUSEPORT), so the kernel spreads
 * connections across the loops and they share nothing on the request path.
 * A long BURN is handed to a worker thread and its answer comes back to the
 * loop that owns the connection, so PINGs stay fast while BURNs run. The
 * runtime is in servers/core/reactor.c, because the sandboxed server and
 * the incrementor are this design plus their own requests.
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
