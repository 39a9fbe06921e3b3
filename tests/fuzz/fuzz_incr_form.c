/* libFuzzer target: the incrementor's form bodies and the checks under them
 * (incrementor/parse.c), the whole input taken as each of them in turn:
 *   - req_parse_form returns 0 or 400, and a 400 comes with a reason;
 *   - an accepted body's key is 1..256 bytes req_key_check accepts, stored in
 *     the caller's buffer;
 *   - what is accepted round-trips: the key percent-encoded again (every
 *     byte, so 768 characters at most) and the value printed make a body
 *     that parses to the same item;
 *   - req_key_check agrees with a second, table-driven UTF-8 check;
 *   - req_parse_i64 agrees with strtoll on signed digit strings;
 *   - req_content_kind reads nothing past its length.
 * Build and run: make fuzz. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "incrementor/parse.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Unicode's table of well-formed UTF-8 (The Unicode Standard, table 3-7):
 * for each lead byte, the range of the second byte; later bytes are 80..BF. */
static int utf8_seq(const uint8_t *p, size_t left)
{
    uint8_t c = p[0];
    int n;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c == 0xe0)
        n = 3, lo = 0xa0;
    else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
        n = 3;
    else if (c == 0xed)
        n = 3, hi = 0x9f;
    else if (c == 0xf0)
        n = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3)
        n = 4;
    else if (c == 0xf4)
        n = 4, hi = 0x8f;
    else
        return -1;
    if ((size_t)n > left || p[1] < lo || p[1] > hi)
        return -1;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return -1;
    return n;
}

/* The reference for req_key_check: 1..256 bytes of well-formed UTF-8
 * without C0 controls, DEL or C1 controls (C2 80..C2 9F). */
static int key_ok(const uint8_t *p, size_t len)
{
    if (len == 0 || len > REQ_KEY_MAX)
        return 0;
    for (size_t i = 0; i < len;) {
        int n = utf8_seq(p + i, len - i);
        if (n < 0 || p[i] < 0x20 || p[i] == 0x7f || (p[i] == 0xc2 && p[i + 1] <= 0x9f))
            return 0;
        i += (size_t)n;
    }
    return 1;
}

static void check_form(const char *body, size_t len)
{
    char keybuf[REQ_KEY_MAX], err[256];
    req_item_t item;
    err[0] = '\0';
    int rc = req_parse_form(body, len, keybuf, &item, err, sizeof err);
    CHECK(rc == 0 || rc == 400);
    if (rc != 0) {
        CHECK(err[0] != '\0' && memchr(err, '\0', sizeof err) != NULL);
        return;
    }
    CHECK(item.key == keybuf && item.key_len >= 1 && item.key_len <= REQ_KEY_MAX);
    const char *why;
    CHECK(req_key_check(item.key, item.key_len, &why) == 0);

    /* Again, every key byte percent-encoded, the parameters the other way round. */
    static const char hex[] = "0123456789ABCDEF";
    char again[32 + 3 * REQ_KEY_MAX];
    int n = snprintf(again, sizeof again, "value=%" PRId64 "&key=", item.value);
    CHECK(n > 0 && (size_t)n + 3 * item.key_len <= sizeof again);
    for (size_t i = 0; i < item.key_len; i++) {
        uint8_t c = (uint8_t)item.key[i];
        again[n++] = '%';
        again[n++] = hex[c >> 4];
        again[n++] = hex[c & 15];
    }
    char keybuf2[REQ_KEY_MAX];
    req_item_t item2;
    CHECK(req_parse_form(again, (size_t)n, keybuf2, &item2, err, sizeof err) == 0);
    CHECK(item2.value == item.value && item2.key_len == item.key_len);
    CHECK(memcmp(item2.key, item.key, item.key_len) == 0);
}

static void check_i64(const char *s, size_t len)
{
    int64_t v = 0;
    int rc = req_parse_i64(s, len, &v);
    CHECK(rc == 0 || rc == -EINVAL || rc == -ERANGE);
    size_t i = len > 0 && (s[0] == '+' || s[0] == '-');
    int digits = i < len;
    for (size_t k = i; k < len; k++)
        digits &= s[k] >= '0' && s[k] <= '9';
    CHECK((rc == -EINVAL) == !digits);
    if (!digits || len > 64)
        return;
    char z[66];
    memcpy(z, s, len);
    z[len] = '\0';
    errno = 0;
    long long ref = strtoll(z, NULL, 10);
    CHECK((rc == -ERANGE) == (errno == ERANGE));
    if (rc == 0)
        CHECK(v == ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    check_form(buf, size);
    check_i64(buf, size);

    const char *why = NULL;
    int rc = req_key_check(buf, size, &why);
    CHECK(rc == 0 || (rc == -EINVAL && why && *why));
    CHECK((rc == 0) == key_ok(data, size));

    int kind = req_content_kind(size ? buf : NULL, size);
    CHECK(kind == 0 || kind == REQ_FORM || kind == REQ_JSON);
    return 0;
}
