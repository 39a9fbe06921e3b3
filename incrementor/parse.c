#include "parse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/http.h"

#define VALUE_RAW_MAX 64 /* longer values are not int64 (leading zeros aside) */

/* Is the media type of ct (len bytes) `type`, followed by the end, a
 * parameter or white space? Compared as http_name_is does: nearly every
 * client writes it lower case, so a memcmp decides (the scan and
 * strncasecmp this replaced cost 400 instructions a request). */
static int media_type_is(const char *ct, size_t len, const char *type)
{
    size_t n = strlen(type);
    if (len < n || (len > n && ct[n] != ';' && ct[n] != ' ' && ct[n] != '\t'))
        return 0;
    return http_name_is(ct, n, type);
}

int req_content_kind(const char *ct, size_t len)
{
    if (!ct)
        return 0;
    if (media_type_is(ct, len, "application/x-www-form-urlencoded"))
        return REQ_FORM;
    if (media_type_is(ct, len, "application/json"))
        return REQ_JSON;
    return 0;
}

int req_key_check(const char *key, size_t len, const char **why)
{
    const unsigned char *p = (const unsigned char *)key;
    if (len == 0) {
        *why = "empty key";
        return -EINVAL;
    }
    if (len > REQ_KEY_MAX) {
        *why = "key longer than 256 bytes";
        return -EINVAL;
    }
    for (size_t i = 0; i < len;) {
        unsigned c = p[i];
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                goto control;
            i++;
            continue;
        }
        /* Multi-byte: the length from the lead byte, then the smallest
         * code point that length may encode (shorter forms are overlong). */
        size_t n;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4, cp = c & 0x07, min = 0x10000;
        } else {
            goto bad;
        }
        if (i + n > len)
            goto bad;
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                goto bad;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            goto bad;
        if (cp <= 0x9f) /* C1 controls U+0080..U+009F */
            goto control;
        i += n;
    }
    return 0;
control:
    *why = "key contains a control character";
    return -EINVAL;
bad:
    *why = "key is not valid UTF-8";
    return -EINVAL;
}

int req_parse_i64(const char *s, size_t len, int64_t *v)
{
    size_t i = 0;
    int neg = 0;
    if (len > 0 && (s[0] == '-' || s[0] == '+')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == len)
        return -EINVAL;
    /* Accumulate as a negative number: its range reaches INT64_MIN. */
    int64_t x = 0;
    int range = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        int d = s[i] - '0';
        if (x < (INT64_MIN + d) / 10)
            range = 1; /* keep scanning: a later non-digit makes it -EINVAL */
        else
            x = x * 10 - d;
    }
    if (range || (!neg && x == INT64_MIN))
        return -ERANGE;
    *v = neg ? x : -x;
    return 0;
}

int req_parse_form(const char *body, size_t len, char *keybuf, req_item_t *item, char *err,
                   size_t errlen)
{
    const char *key = NULL, *val = NULL;
    size_t key_len = 0, val_len = 0;
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp ? amp : end;
        if (seg_end > p) { /* empty segments (a trailing '&') are skipped */
            const char *eq = memchr(p, '=', (size_t)(seg_end - p));
            if (!eq) {
                snprintf(err, errlen, "malformed form body: a parameter has no '='");
                return 400;
            }
            size_t nl = (size_t)(eq - p);
            if (nl == 3 && memcmp(p, "key", 3) == 0) {
                if (key) {
                    snprintf(err, errlen, "key given twice");
                    return 400;
                }
                key = eq + 1;
                key_len = (size_t)(seg_end - key);
            } else if (nl == 5 && memcmp(p, "value", 5) == 0) {
                if (val) {
                    snprintf(err, errlen, "value given twice");
                    return 400;
                }
                val = eq + 1;
                val_len = (size_t)(seg_end - val);
            } else {
                snprintf(err, errlen, "unexpected parameter (only key and value are accepted)");
                return 400;
            }
        }
        p = seg_end + 1;
    }
    if (!key) {
        snprintf(err, errlen, "missing key");
        return 400;
    }
    if (!val) {
        snprintf(err, errlen, "missing value");
        return 400;
    }
    /* A percent-encoded byte takes at most 3 characters. */
    char tmp[3 * REQ_KEY_MAX];
    ssize_t kn = key_len <= sizeof tmp ? http_url_decode(key, key_len, tmp, 1) : REQ_KEY_MAX + 1;
    if (kn < 0) {
        snprintf(err, errlen, "bad percent-encoding in key");
        return 400;
    }
    if (kn > REQ_KEY_MAX) {
        snprintf(err, errlen, "key longer than 256 bytes");
        return 400;
    }
    memcpy(keybuf, tmp, (size_t)kn);
    const char *why;
    if (req_key_check(keybuf, (size_t)kn, &why) < 0) {
        snprintf(err, errlen, "%s", why);
        return 400;
    }
    char vbuf[VALUE_RAW_MAX];
    ssize_t vn = val_len <= VALUE_RAW_MAX ? http_url_decode(val, val_len, vbuf, 1) : -1;
    if (vn < 0) {
        snprintf(err, errlen,
                 val_len > VALUE_RAW_MAX ? "value out of int64 range"
                                         : "bad percent-encoding in value");
        return 400;
    }
    int rc = req_parse_i64(vbuf, (size_t)vn, &item->value);
    if (rc < 0) {
        snprintf(err, errlen,
                 rc == -ERANGE ? "value out of int64 range" : "value is not an integer");
        return 400;
    }
    item->key = keybuf;
    item->key_len = (size_t)kn;
    return 0;
}

int req_parse_json(const char *body, size_t len, json_t **root, req_item_t **items, size_t *n,
                   char *err, size_t errlen)
{
    json_error_t je;
    req_item_t *it = NULL;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        /* jansson says "too big integer" for values beyond int64. */
        snprintf(err, errlen, "%s%s",
                 strstr(je.text, "too big") ? "value out of int64 range: " : "bad JSON: ", je.text);
        return 400;
    }
    if (!json_is_object(j) || json_object_size(j) == 0) {
        snprintf(err, errlen,
                 json_is_object(j) ? "empty batch: missing key and value"
                                   : "JSON body must be an object {\"key\": value}");
        goto err;
    }
    it = calloc(json_object_size(j), sizeof *it);
    if (!it) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v)
    {
        const char *why;
        size_t kl = strlen(k);
        if (req_key_check(k, kl, &why) < 0) {
            snprintf(err, errlen, "%s", why);
            goto err;
        }
        if (!json_is_integer(v)) {
            snprintf(err, errlen, "value is not an integer");
            goto err;
        }
        it[i++] = (req_item_t){k, kl, (int64_t)json_integer_value(v)};
    }
    *root = j;
    *items = it;
    *n = i;
    return 0;
err:
    free(it);
    json_decref(j);
    return 400;
}

int req_idem_key(const http_header_t *h, size_t nh, const char **key, size_t *len, char *err,
                 size_t errlen)
{
    static const char name[] = "Idempotency-Key";
    *key = NULL;
    *len = 0;
    for (size_t i = 0; i < nh; i++) {
        if (!http_name_is(h[i].name, h[i].name_len, name))
            continue;
        if (*key) {
            snprintf(err, errlen, "Idempotency-Key given twice");
            return 400;
        }
        *key = h[i].value;
        *len = h[i].value_len;
        if (*len == 0) {
            snprintf(err, errlen, "empty Idempotency-Key");
            return 400;
        }
        if (*len > REQ_IDEM_MAX) {
            snprintf(err, errlen, "Idempotency-Key longer than %d bytes", REQ_IDEM_MAX);
            return 400;
        }
        for (size_t k = 0; k < *len; k++) {
            unsigned char c = (unsigned char)(*key)[k];
            if (c < 0x21 || c > 0x7e) {
                snprintf(err, errlen, "Idempotency-Key must be visible ASCII characters only");
                return 400;
            }
        }
    }
    return 0;
}

/* splitmix64's finalizer: every input bit reaches every output bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t req_fingerprint(const req_item_t *it, size_t n)
{
    /* A sum of per-item hashes is the same in any order. */
    uint64_t fp = mix64(n);
    for (size_t i = 0; i < n; i++) {
        uint64_t h = 1469598103934665603ULL; /* FNV-1a of the key */
        for (size_t k = 0; k < it[i].key_len; k++) {
            h ^= (unsigned char)it[i].key[k];
            h *= 1099511628211ULL;
        }
        fp += mix64(h ^ mix64((uint64_t)it[i].value + 0x9e3779b97f4a7c15ULL));
    }
    return fp;
}
