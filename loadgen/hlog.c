#include "hlog.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

/* ---- big-endian fields and ZigZag LEB128 ---- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

/* v as ZigZag LEB128: 7 bits a byte, the high bit saying "more"; a ninth
 * byte holds the last 8 bits whole. Returns the bytes written (1..9). */
static size_t put_varint(uint8_t *p, int64_t v)
{
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (n < 8) {
        if (z < 0x80) {
            p[n++] = (uint8_t)z;
            return n;
        }
        p[n++] = (uint8_t)(z | 0x80);
        z >>= 7;
    }
    p[n++] = (uint8_t)z;
    return n;
}

/* The varint at p[*pos] (n bytes in all) into *v. Returns 0, or -EINVAL
 * when it runs past the end. */
static int get_varint(const uint8_t *p, size_t n, size_t *pos, int64_t *v)
{
    uint64_t z = 0;
    for (unsigned i = 0; i < 9; i++) {
        if (*pos >= n)
            return -EINVAL;
        uint8_t b = p[(*pos)++];
        if (i == 8) {
            z |= (uint64_t)b << 56;
            break;
        }
        z |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80))
            break;
    }
    *v = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
    return 0;
}

/* ---- base64 (RFC 4648, padded) ---- */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_encode(const uint8_t *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            w |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            w |= p[i + 2];
        out[o++] = b64_chars[w >> 18];
        out[o++] = b64_chars[(w >> 12) & 63];
        out[o++] = i + 1 < n ? b64_chars[(w >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64_chars[w & 63] : '=';
    }
    out[o] = '\0';
}

static int b64_value(char c)
{
    const char *p = c ? strchr(b64_chars, c) : NULL;
    return p ? (int)(p - b64_chars) : -1;
}

/* Decode len characters of s into out (at least len / 4 * 3 bytes). Returns
 * the bytes decoded, or -EINVAL. */
static long b64_decode(const char *s, size_t len, uint8_t *out)
{
    if (len % 4)
        return -EINVAL;
    long o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = b64_value(s[i + k])) < 0) {
                return -EINVAL;
            }
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (uint8_t)(w >> 16);
        if (pad < 2)
            out[o++] = (uint8_t)(w >> 8);
        if (pad < 1)
            out[o++] = (uint8_t)w;
    }
    return o;
}

/* ---- the V2 encoding ---- */

/* One past the last non-empty bucket; 1 for an empty histogram (its bucket
 * 0 is then written, as HdrHistogram writes countsArrayIndex(max 0) + 1). */
static unsigned counts_limit(const hist_t *h)
{
    for (unsigned i = HIST_BUCKETS; i > 0; i--)
        if (h->counts[i - 1])
            return i;
    return 1;
}

uint64_t hlog_max(const hist_t *h)
{
    unsigned lim = counts_limit(h);
    if (h->counts[lim - 1] == 0)
        return 0;
    uint64_t v = hist_bucket_high(lim - 1);
    return v < HIST_MAX_US ? v : HIST_MAX_US;
}

size_t hlog_encode(const hist_t *h, uint8_t *out)
{
    union {
        double d;
        uint64_t u;
    } one = {.d = 1.0};
    put32(out, HLOG_COOKIE);
    put32(out + 8, 0);
    put32(out + 12, HLOG_DIGITS);
    put64(out + 16, HLOG_LOWEST);
    put64(out + 24, HLOG_HIGHEST);
    put64(out + 32, one.u);
    size_t n = HLOG_HEADER;
    unsigned lim = counts_limit(h);
    for (unsigned i = 0; i < lim;) {
        uint64_t c = h->counts[i++];
        if (c == 0) {
            int64_t zeros = 1;
            while (i < lim && h->counts[i] == 0)
                zeros++, i++;
            if (zeros > 1) {
                n += put_varint(out + n, -zeros);
                continue;
            }
        }
        n += put_varint(out + n, (int64_t)c);
    }
    put32(out + 4, (uint32_t)(n - HLOG_HEADER));
    return n;
}

char *hlog_encode_b64(const hist_t *h)
{
    uint8_t *raw = malloc(HLOG_ENCODED_MAX);
    uLongf zlen = compressBound(HLOG_ENCODED_MAX);
    uint8_t *z = malloc(8 + zlen);
    char *out = NULL;
    if (!raw || !z)
        goto err;
    size_t n = hlog_encode(h, raw);
    /* Level 9, as HistogramLogWriter's Deflater.BEST_COMPRESSION. */
    if (compress2(z + 8, &zlen, raw, n, 9) != Z_OK)
        goto err;
    put32(z, HLOG_COOKIE_Z);
    put32(z + 4, (uint32_t)zlen);
    out = malloc((8 + zlen + 2) / 3 * 4 + 1);
    if (out)
        b64_encode(z, 8 + zlen, out);
err:
    free(raw);
    free(z);
    return out;
}

int hlog_decode(const uint8_t *p, size_t n, hist_t *h, char *err, size_t errlen)
{
    hist_reset(h);
    if (n < HLOG_HEADER || (get32(p) & ~0xf0u) != (HLOG_COOKIE & ~0xf0u)) {
        snprintf(err, errlen, "not an HdrHistogram V2 encoding");
        return -EINVAL;
    }
    uint32_t len = get32(p + 4);
    int32_t digits = (int32_t)get32(p + 12);
    uint64_t lowest = get64(p + 16), highest = get64(p + 24);
    if (digits != HLOG_DIGITS || lowest != HLOG_LOWEST) {
        snprintf(err, errlen,
                 "histogram parameters differ: lowest %llu, %d significant digits (loadgen's: %d, "
                 "%d)",
                 (unsigned long long)lowest, digits, HLOG_LOWEST, HLOG_DIGITS);
        return -EINVAL;
    }
    if (len > n - HLOG_HEADER) {
        snprintf(err, errlen, "histogram truncated");
        return -EINVAL;
    }
    /* The layout does not depend on `highest` (a value beyond 1 h is refused
     * below), nor on the normalizing offset, which ports write as 0 or 1 and
     * readers ignore. */
    (void)highest;
    size_t pos = HLOG_HEADER, end = HLOG_HEADER + len;
    uint64_t idx = 0;
    while (pos < end) {
        int64_t v;
        if (get_varint(p, end, &pos, &v) < 0) {
            snprintf(err, errlen, "histogram truncated");
            return -EINVAL;
        }
        if (v < 0) {
            idx += (uint64_t)-v;
            continue;
        }
        if (idx >= HIST_BUCKETS) {
            snprintf(err, errlen, "histogram holds values beyond %llu us",
                     (unsigned long long)HIST_MAX_US);
            return -EINVAL;
        }
        h->counts[idx++] = (uint64_t)v;
    }
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        uint64_t c = h->counts[i];
        if (!c)
            continue;
        uint64_t lo = hist_bucket_low(i), hi = hist_bucket_high(i);
        if (h->count == 0)
            h->min = lo;
        h->max = hi < HIST_MAX_US ? hi : HIST_MAX_US;
        double mid = (double)lo + (double)((hi - lo + 1) / 2);
        h->count += c;
        h->sum += (double)c * mid;
        h->sumsq += (double)c * mid * mid;
    }
    return 0;
}

int hlog_decode_b64(const char *s, size_t len, hist_t *h, char *err, size_t errlen)
{
    uint8_t *z = malloc(len / 4 * 3 + 3), *raw = malloc(HLOG_ENCODED_MAX);
    int rc = -EINVAL;
    if (!z || !raw) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    long zn = b64_decode(s, len, z);
    if (zn < 8 || get32(z) != HLOG_COOKIE_Z || get32(z + 4) > (uint64_t)zn - 8) {
        snprintf(err, errlen, "not a compressed HdrHistogram V2 histogram");
        goto out;
    }
    z_stream zs = {0};
    if (inflateInit(&zs) != Z_OK) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    zs.next_in = z + 8;
    zs.avail_in = get32(z + 4);
    zs.next_out = raw;
    zs.avail_out = HLOG_ENCODED_MAX;
    int zr = inflate(&zs, Z_FINISH);
    size_t n = HLOG_ENCODED_MAX - zs.avail_out;
    inflateEnd(&zs);
    /* A larger encoding than loadgen's could be another histogram's: let
     * the header speak first. */
    if (zr != Z_STREAM_END && n < HLOG_HEADER) {
        snprintf(err, errlen, "corrupt histogram (zlib: %s)", zs.msg ? zs.msg : "truncated");
        goto out;
    }
    rc = hlog_decode(raw, n, h, err, errlen);
    if (rc == 0 && zr != Z_STREAM_END) {
        snprintf(err, errlen, "corrupt histogram (zlib: %s)", zs.msg ? zs.msg : "too long");
        rc = -EINVAL;
    }
out:
    free(z);
    free(raw);
    return rc;
}

/* ---- interval logs ---- */

int hlog_write_header(FILE *f, double start_s)
{
    char date[64];
    time_t t = (time_t)start_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%a %b %d %H:%M:%S UTC %Y", &tm);
    fprintf(f, "#[Histogram log format version 1.3]\n");
    fprintf(f, "#[loadgen: latencies in microseconds; the max column in milliseconds]\n");
    fprintf(f, "#[StartTime: %.3f (seconds since epoch), %s]\n", start_s, date);
    fprintf(f, "#[BaseTime: %.3f (seconds since epoch)]\n", start_s);
    fprintf(f, "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\","
               "\"Interval_Compressed_Histogram\"\n");
    return ferror(f) ? -EIO : 0;
}

int hlog_write_interval(FILE *f, double start_s, double len_s, const hist_t *h)
{
    char *b64 = hlog_encode_b64(h);
    if (!b64)
        return -ENOMEM;
    fprintf(f, "%.3f,%.3f,%.3f,%s\n", start_s, len_s, (double)hlog_max(h) / HLOG_MAX_RATIO, b64);
    free(b64);
    return ferror(f) ? -EIO : 0;
}

/* A "#[KEY: <seconds>" comment's number into *v. */
static void header_time(const char *line, const char *key, double *v)
{
    size_t k = strlen(key);
    if (strncmp(line, key, k) == 0) {
        char *end;
        double d = strtod(line + k, &end);
        if (end != line + k)
            *v = d;
    }
}

/* One interval line into start, length and the histogram. Returns 0 or
 * -EINVAL with err filled. */
static int parse_interval(char *line, double *start, double *len, hist_t *h, char *err,
                          size_t errlen)
{
    if (strncmp(line, "Tag=", 4) == 0) {
        char *comma = strchr(line, ',');
        if (!comma)
            goto bad;
        line = comma + 1;
    }
    char *p = line, *end;
    double max;
    *start = strtod(p, &end);
    if (end == p || *end != ',')
        goto bad;
    p = end + 1;
    *len = strtod(p, &end);
    if (end == p || *end != ',')
        goto bad;
    p = end + 1;
    max = strtod(p, &end);
    if (end == p || *end != ',' || !isfinite(*start) || !isfinite(*len) || !isfinite(max))
        goto bad;
    p = end + 1;
    size_t n = strcspn(p, "\r\n");
    return hlog_decode_b64(p, n, h, err, errlen);
bad:
    snprintf(err, errlen, "expected \"start,length,max,histogram\"");
    return -EINVAL;
}

int hlog_read(FILE *f, hlog_fn fn, void *ctx, double *start_s, char *err, size_t errlen)
{
    double start = NAN, base = NAN;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = 0;
    hist_t *h = malloc(sizeof *h);
    *start_s = NAN;
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        if (line[0] == '#') {
            header_time(line, "#[StartTime: ", &start);
            header_time(line, "#[BaseTime: ", &base);
            continue;
        }
        if (line[0] == '"' || line[strspn(line, " \t\r\n")] == '\0')
            continue; /* the legend, a blank line */
        double ts, len;
        char why[200];
        if (parse_interval(line, &ts, &len, h, why, sizeof why) < 0) {
            snprintf(err, errlen, "line %ld: %s", lineno, why);
            rc = -EINVAL;
            goto out;
        }
        double abs = !isnan(base)              ? base + ts
                     : ts >= 365 * 24 * 3600.0 ? ts
                                               : (isnan(start) ? 0 : start) + ts;
        if (isnan(*start_s))
            *start_s = isnan(start) ? abs : start;
        if ((rc = fn(ctx, abs, len, h, err, errlen)) < 0)
            goto out;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "read error");
        rc = -EIO;
    }
out:
    free(line);
    free(h);
    return rc;
}
