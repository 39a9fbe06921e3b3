/* echo server - the baseline: one thread, epoll, and for every request it can
 * frame (an HTTP head, through its blank line) the same canned hello
 * response. No parsing, no routing, no metrics, no timers.
 *
 * Not a design to copy but a yardstick: what one core does with this kernel
 * and loopback when the server does almost nothing. The other designs are
 * measured against it to see what their own work costs.
 * Weakness: it serves nothing else (no line protocol, no errors, no
 * timeouts), so a slow or hostile client is never cut. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/net.h"
#include "core/server.h"

#define BUF 16384

static const char hello[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            "Content-Length: 13\r\n\r\nhello, world\n";

struct conn {
    int fd;
    size_t in_len, out_off, out_len;
    char in[BUF], out[BUF];
};

/* Answer every complete head in the input, write, and say what to wait for:
 * EPOLLIN, EPOLLOUT, or 0 to close. */
static unsigned serve(struct conn *c)
{
    for (;;) {
        char *p = c->in, *end = c->in + c->in_len, *e;
        while ((e = memmem(p, (size_t)(end - p), "\r\n\r\n", 4)) != NULL &&
               c->out_len + sizeof hello - 1 <= BUF) {
            memcpy(c->out + c->out_len, hello, sizeof hello - 1);
            c->out_len += sizeof hello - 1;
            p = e + 4;
        }
        c->in_len = (size_t)(end - p);
        memmove(c->in, p, c->in_len);
        if (c->in_len == BUF)
            return 0; /* a head larger than the buffer: not ours to serve */
        while (c->out_off < c->out_len) {
            ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (w < 0)
                return errno == EAGAIN ? EPOLLOUT : 0;
            c->out_off += (size_t)w;
        }
        c->out_off = c->out_len = 0;
        /* The output was full before the input was answered: go on. */
        if (!memmem(c->in, c->in_len, "\r\n\r\n", 4))
            return EPOLLIN;
    }
}

int main(int argc, char **argv)
{
    server_cfg_t cfg;
    server_init(argc, argv, "echo", 0, &cfg);
    int lfd = server_listen(&cfg, NET_NONBLOCK);
    if (lfd < 0)
        return 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    static int listener, stopper;
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &listener};
    struct epoll_event st = {.events = EPOLLIN, .data.ptr = &stopper};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, server_stop_fd(), &st) < 0) {
        fprintf(stderr, "server-echo: epoll: %s\n", strerror(errno));
        return 1;
    }
    server_announce(&cfg, lfd);

    while (!server_stopping) {
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (evs[i].data.ptr == &stopper)
                continue;
            if (evs[i].data.ptr == &listener) {
                int fd;
                while ((fd = server_accept(lfd, &cfg)) != -EAGAIN) {
                    if (fd == -ECONNREFUSED || fd == -EINTR || fd == -ECONNABORTED)
                        continue;
                    if (fd < 0)
                        break; /* out of descriptors or memory: on the next wake-up */
                    /* malloc, not calloc: the buffers' pages cost memory only
                     * once a client sends something. */
                    if (!(c = malloc(sizeof *c))) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    c->in_len = c->out_off = c->out_len = 0;
                    struct epoll_event a = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &a) < 0) {
                        close(fd); /* out of memory or of epoll watches */
                        free(c);
                    }
                }
                continue;
            }
            unsigned want = EPOLLIN;
            if (evs[i].events & EPOLLIN) {
                ssize_t r = read(c->fd, c->in + c->in_len, BUF - c->in_len);
                if (r > 0)
                    c->in_len += (size_t)r;
                want = r > 0 ? serve(c) : (r < 0 && errno == EAGAIN) ? EPOLLIN : 0;
            } else if (evs[i].events & EPOLLOUT) {
                want = serve(c);
            } else {
                want = 0; /* error or hang-up */
            }
            if (!want) {
                close(c->fd);
                free(c);
            } else if (want != evs[i].events) {
                struct epoll_event m = {.events = want, .data.ptr = c};
                (void)epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &m); /* registered: cannot fail */
            }
        }
    }
    return 0;
}
