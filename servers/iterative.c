/* iterative server - one connection at a time: accept it, serve it to the
 * end with blocking waits, then accept the next.
 *
 * The simplest model, and the lesson of the lab: while one client is served,
 * nobody else is. A WAIT, a slow reader of a STREAM or a client that sends
 * its request one byte a second (slowloris) holds up every other client, who
 * sit in the listen backlog. The header timeout is its only defence. */
#include <errno.h>

#include "core/server.h"

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "iterative", 0, &cfg);
    int lfd = server_listen(&cfg, 0);
    server_announce(&cfg, lfd);

    int fd;
    while ((fd = server_accept_blocking(lfd, &cfg)) != -ECANCELED)
        if (fd >= 0)
            server_serve_blocking(fd, &cfg);
    return 0;
}
