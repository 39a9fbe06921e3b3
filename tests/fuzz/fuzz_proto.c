/* libFuzzer target: the line protocol parser, taking every line of the input
 * the way a server does, asserting invariants on each:
 *   - a line taken ends in '\n', holds no earlier '\n' and is within the limit;
 *   - partial means no '\n' yet and still within the limit;
 *   - arguments respect each command's bounds, errors carry a reason;
 *   - proto_parse_u64 agrees with strtoull on digit strings.
 * Build and run: make fuzz. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/proto.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    uint64_t burn_max = size > 0 ? (uint64_t)data[0] * 1000 : PROTO_BURN_MAX;

    int kind = proto_detect(buf, size);
    CHECK(kind == PROTO_UNKNOWN || kind == PROTO_LINE || kind == PROTO_HTTP);
    if (kind == PROTO_UNKNOWN)
        CHECK(memchr(buf, '\n', size) == NULL);

    size_t off = 0;
    while (off < size) {
        proto_line_t l;
        int r = proto_parse_line(buf + off, size - off, burn_max, &l);
        size_t left = size - off;
        CHECK(r >= 0 || r == -EMSGSIZE);
        if (r == -EMSGSIZE) {
            const char *nl = memchr(buf + off, '\n', left);
            CHECK(!nl || (size_t)(nl - (buf + off)) > PROTO_MAX_LINE);
            break;
        }
        if (r == 0) {
            CHECK(memchr(buf + off, '\n', left) == NULL);
            CHECK(left <= PROTO_MAX_LINE + 1);
            break;
        }
        CHECK((size_t)r <= left && (size_t)r <= PROTO_MAX_LINE + 2);
        CHECK(buf[off + (size_t)r - 1] == '\n');
        CHECK(memchr(buf + off, '\n', (size_t)r - 1) == NULL);
        switch (l.cmd) {
        case CMD_PING:
            CHECK(l.err == NULL);
            break;
        case CMD_WAIT:
            CHECK(l.err == NULL && l.arg <= PROTO_WAIT_MAX);
            break;
        case CMD_BURN:
            CHECK(l.err == NULL && l.arg <= burn_max);
            break;
        case CMD_STREAM:
            CHECK(l.err == NULL && l.arg <= PROTO_STREAM_MAX);
            break;
        case CMD_JOIN:
        case CMD_SAY:
            CHECK(l.err == NULL && l.text_len > 0 && l.text > buf + off &&
                  l.text + l.text_len <= buf + off + (size_t)r - 1);
            break;
        case CMD_LEAVE:
            CHECK(l.err == NULL);
            break;
        case CMD_ERR:
            CHECK(l.err != NULL && l.err[0] != '\0');
            break;
        default:
            CHECK(0);
        }
        off += (size_t)r;
    }

    /* Numbers: the whole input, against strtoull when it is all digits. */
    if (size <= 64) {
        uint64_t v = 0;
        int r = proto_parse_u64(buf, size, UINT64_MAX, &v);
        CHECK(r == 0 || r == -EINVAL || r == -ERANGE);
        int digits = size > 0;
        for (size_t i = 0; i < size; i++)
            digits &= buf[i] >= '0' && buf[i] <= '9';
        CHECK((r == -EINVAL) == !digits);
        if (digits) {
            char s[65];
            memcpy(s, buf, size);
            s[size] = '\0';
            errno = 0;
            unsigned long long ref = strtoull(s, NULL, 10);
            CHECK((r == -ERANGE) == (errno == ERANGE));
            if (r == 0)
                CHECK(v == ref);
        }
    }
    return 0;
}
