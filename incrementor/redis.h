/* redis: what the incrementor's web nodes (queue.c) and writer (consume.c)
 * need of Redis, over hiredis (Debian's libhiredis-dev): the URL, a
 * connection with timeouts, and scripts run by their SHA1. */
#ifndef INCR_REDIS_H
#define INCR_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define RDS_PREFIX  "incrementor:"
#define RDS_STREAM  RDS_PREFIX "stream"
#define RDS_GROUP   "writers"
#define RDS_LAG     RDS_PREFIX "lag"
#define RDS_TIMEOUT 2000 /* ms, to connect and for each command */

/* Parse "redis://HOST:PORT" (HOST a name or an IPv4 address, PORT 1..65535).
 * Returns 0, or -EINVAL. */
int rds_parse_url(const char *url, char *host, size_t hostlen, int *port);

/* Connect with RDS_TIMEOUT. Returns the context, or NULL with err filled. */
redisContext *rds_connect(const char *host, int port, char *err, size_t errlen);

/* Run `script` (its SHA1 hex in sha, computed by Redis on first use: pass
 * sha[0] = 0) with no keys and the arguments argv[3..argc), whose first
 * three slots the function fills (EVALSHA, sha, "0"). A script Redis does
 * not know (NOSCRIPT: after a restart) is loaded and run again: NOSCRIPT
 * means it did not run. Returns the reply (freeReplyObject), or NULL when
 * the connection failed (c->errstr says why; the caller reconnects). */
redisReply *rds_script(redisContext *c, const char *script, char sha[41], int argc,
                       const char **argv, size_t *lens);

/* Parse a stream id "MS-SEQ". Returns 0, or -EINVAL. */
int rds_parse_id(const char *s, size_t len, uint64_t *ms, uint64_t *seq);

#endif
