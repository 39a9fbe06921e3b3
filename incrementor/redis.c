#include "redis.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int rds_parse_url(const char *url, char *host, size_t hostlen, int *port)
{
    static const char scheme[] = "redis://";
    if (strncmp(url, scheme, sizeof scheme - 1))
        return -EINVAL;
    const char *h = url + sizeof scheme - 1, *colon = strrchr(h, ':');
    if (!colon || colon == h || (size_t)(colon - h) >= hostlen)
        return -EINVAL;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 1 || p > 65535)
        return -EINVAL;
    memcpy(host, h, (size_t)(colon - h));
    host[colon - h] = 0;
    if (strpbrk(host, "/@?"))
        return -EINVAL; /* no user, path or query: not supported */
    *port = (int)p;
    return 0;
}

redisContext *rds_connect(const char *host, int port, char *err, size_t errlen)
{
    struct timeval tv = {RDS_TIMEOUT / 1000, (RDS_TIMEOUT % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c) {
        snprintf(err, errlen, "redis://%s:%d: out of memory", host, port);
        return NULL;
    }
    if (c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "redis://%s:%d: %s", host, port, c->errstr);
        redisFree(c);
        return NULL;
    }
    return c;
}

redisReply *rds_script(redisContext *c, const char *script, char sha[41], int argc,
                       const char **argv, size_t *lens)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!sha[0] || attempt) {
            redisReply *r = redisCommand(c, "SCRIPT LOAD %s", script);
            if (!r)
                return NULL;
            if (r->type != REDIS_REPLY_STRING || r->len != 40)
                return r; /* an error reply: the caller reports it */
            memcpy(sha, r->str, 41);
            freeReplyObject(r);
        }
        argv[0] = "EVALSHA";
        lens[0] = 7;
        argv[1] = sha;
        lens[1] = 40;
        argv[2] = "0";
        lens[2] = 1;
        redisReply *r = redisCommandArgv(c, argc, argv, lens);
        if (!r || r->type != REDIS_REPLY_ERROR || strncmp(r->str, "NOSCRIPT", 8) || attempt)
            return r;
        freeReplyObject(r);
    }
    return NULL; /* not reached */
}

int rds_parse_id(const char *s, size_t len, uint64_t *ms, uint64_t *seq)
{
    char buf[48], *end;
    if (len == 0 || len >= sizeof buf)
        return -EINVAL;
    memcpy(buf, s, len);
    buf[len] = 0;
    errno = 0;
    *ms = strtoull(buf, &end, 10);
    if (*end != '-' || end == buf || errno)
        return -EINVAL;
    const char *q = end + 1;
    *seq = strtoull(q, &end, 10);
    if (*end || end == q || errno)
        return -EINVAL;
    return 0;
}
