#include "proto.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

uint64_t proto_burn(uint64_t n)
{
    uint64_t x = 0;
    for (uint64_t i = 0; i < n; i++)
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return x;
}

int proto_parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0)
        return -EINVAL;
    /* Not a number at all is -EINVAL even when its digits would overflow. */
    for (size_t i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    if (v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

static int word_is(const char *s, size_t len, const char *word)
{
    return strlen(word) == len && strncasecmp(s, word, len) == 0;
}

int proto_parse_line(const char *buf, size_t len, uint64_t burn_max, proto_line_t *out)
{
    size_t scan = len < PROTO_MAX_LINE + 2 ? len : PROTO_MAX_LINE + 2;
    const char *nl = memchr(buf, '\n', scan);
    if (!nl)
        return len > PROTO_MAX_LINE + 1 ? -EMSGSIZE : 0;
    size_t consumed = (size_t)(nl - buf) + 1;
    size_t n = (size_t)(nl - buf);
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n > PROTO_MAX_LINE)
        return -EMSGSIZE;

    const char *sp = memchr(buf, ' ', n);
    size_t wlen = sp ? (size_t)(sp - buf) : n;
    const char *arg = sp ? sp + 1 : NULL;
    size_t alen = sp ? n - wlen - 1 : 0;
    uint64_t max = 0;

    out->err = NULL;
    out->arg = 0;
    if (word_is(buf, wlen, "PING")) {
        out->cmd = CMD_PING;
        if (sp)
            goto bad_args;
        return (int)consumed;
    } else if (word_is(buf, wlen, "WAIT")) {
        out->cmd = CMD_WAIT;
        max = PROTO_WAIT_MAX;
    } else if (word_is(buf, wlen, "BURN")) {
        out->cmd = CMD_BURN;
        max = burn_max;
    } else if (word_is(buf, wlen, "STREAM")) {
        out->cmd = CMD_STREAM;
        max = PROTO_STREAM_MAX;
    } else if (word_is(buf, wlen, "JOIN") || word_is(buf, wlen, "SAY")) {
        /* The rest of the line is the room or the text, as it came. */
        out->cmd = wlen == 4 ? CMD_JOIN : CMD_SAY; /* text is set for these only */
        out->text = arg;
        out->text_len = alen;
        if (!arg || alen == 0) {
            out->cmd = CMD_ERR;
            out->err = wlen == 4 ? "missing room" : "missing text";
        }
        return (int)consumed;
    } else if (word_is(buf, wlen, "LEAVE")) {
        out->cmd = CMD_LEAVE;
        if (sp) {
            out->cmd = CMD_ERR;
            out->err = "unexpected argument";
        }
        return (int)consumed;
    } else {
        out->cmd = CMD_ERR;
        out->err = n == 0 ? "empty command" : "unknown command";
        return (int)consumed;
    }
    if (!arg) {
        out->cmd = CMD_ERR;
        out->err = "missing number";
        return (int)consumed;
    }
    switch (proto_parse_u64(arg, alen, max, &out->arg)) {
    case 0:
        return (int)consumed;
    case -ERANGE:
        out->cmd = CMD_ERR;
        out->err = "number out of range";
        return (int)consumed;
    default:
        goto bad_args;
    }
bad_args:
    out->cmd = CMD_ERR;
    out->err = "bad number";
    return (int)consumed;
}

int proto_detect(const char *buf, size_t len)
{
    size_t scan = len < 8192 ? len : 8192;
    const char *nl = memchr(buf, '\n', scan);
    if (!nl) {
        if (len <= PROTO_MAX_LINE)
            return PROTO_UNKNOWN;
        /* No line end yet in a long first line: a request line with a huge
         * target is HTTP (it will get 414/431); anything else is an overlong
         * command line. */
        const char *p = buf;
        while (p < buf + 16 && *p >= 'A' && *p <= 'Z')
            p++;
        return (p > buf && p[0] == ' ' && p[1] == '/') ? PROTO_HTTP : PROTO_LINE;
    }
    size_t n = (size_t)(nl - buf);
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n >= 9 && memcmp(buf + n - 9, " HTTP/", 6) == 0 && buf[n - 3] >= '0' && buf[n - 3] <= '9' &&
        buf[n - 2] == '.' && buf[n - 1] >= '0' && buf[n - 1] <= '9')
        return PROTO_HTTP;
    return PROTO_LINE;
}
