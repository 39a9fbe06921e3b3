/* proto: the line protocol (PING, WAIT, BURN, STREAM, and the chat's JOIN,
 * SAY, LEAVE) and what both
 * protocols share: limits, the BURN function, number parsing, and telling a
 * line-protocol connection from an HTTP one by its first line. */
#ifndef CORE_PROTO_H
#define CORE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_MAX_LINE   4096           /* a longer line closes the connection */
#define PROTO_WAIT_MAX   60000          /* ms */
#define PROTO_BURN_MAX   10000000000ULL /* default; --burn-max changes it */
#define PROTO_STREAM_MAX 4294967296ULL  /* 2^32 */

enum proto_kind { PROTO_UNKNOWN, PROTO_LINE, PROTO_HTTP };
enum proto_cmd { CMD_PING, CMD_WAIT, CMD_BURN, CMD_STREAM, CMD_JOIN, CMD_SAY, CMD_LEAVE, CMD_ERR };

typedef struct proto_line {
    int cmd;          /* enum proto_cmd */
    uint64_t arg;     /* WAIT ms, BURN n, STREAM n */
    const char *text; /* JOIN's room, SAY's text (set for those only): inside the line */
    size_t text_len;
    const char *err; /* CMD_ERR: the reason, a static string */
} proto_line_t;

/* BURN: x = 0, then n times x = x * 6364136223846793005 + 1442695040888963407
 * (mod 2^64). Really runs n steps. */
uint64_t proto_burn(uint64_t n);

/* Parse a whole string of decimal digits no greater than max.
 * Returns 0, -EINVAL (empty, not digits) or -ERANGE (over max). */
int proto_parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out);

/* Parse one command line at the start of buf. Returns the bytes it takes
 * (through '\n'), 0 when the line is not complete yet, or -EMSGSIZE when the
 * line is longer than PROTO_MAX_LINE. Unknown commands and bad numbers come back as
 * CMD_ERR with a reason: the connection stays usable. */
int proto_parse_line(const char *buf, size_t len, uint64_t burn_max, proto_line_t *out);

/* Which protocol does a connection whose first bytes are buf[0..len) speak?
 * HTTP when the first line is a request line ending in " HTTP/d.d"; the line
 * protocol otherwise. PROTO_UNKNOWN while the first line is incomplete. */
int proto_detect(const char *buf, size_t len);

#endif
