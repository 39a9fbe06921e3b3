/* HdrHistogram's formats (loadgen/hlog.c): the bucket layout against
 * HdrHistogram's definition, a known answer for the V2 encoding derived by
 * hand from the format, a histogram encoded by another implementation,
 * round trips, the merge of three histograms against the histogram of the
 * union of their samples (every bucket), refused input, and interval logs
 * written and read back. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <cmocka.h>

#include "../../loadgen/hlog.h"

static hist_t *new_hist(void)
{
    hist_t *h = calloc(1, sizeof *h);
    assert_non_null(h);
    return h;
}

/* HdrHistogram's countsArrayIndex for lowest 1 and 2 significant digits,
 * from its definitions: subBucketCount = 2^ceil(log2(2 * 10^2)) = 256; the
 * bucket is the first whose range (subBucketCount << b) holds v; the index
 * is (b + 1) * 128 + (v >> b) - 128. A loop, not loadgen's shift. */
static unsigned hdr_index(uint64_t v)
{
    unsigned b = 0;
    while (v >= (256ULL << b))
        b++;
    return (b + 1) * 128 + (unsigned)(v >> b) - 128;
}

static void test_layout_is_hdr(void **state)
{
    (void)state;
    uint64_t rng = 42;
    for (uint64_t v = 0; v < 100000; v++)
        assert_int_equal(hist_index(v), hdr_index(v));
    for (int i = 0; i < 100000; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t v = (rng >> 11) % (HIST_MAX_US + 1) >> (rng & 31);
        assert_int_equal(hist_index(v), hdr_index(v));
    }
    /* countsArrayLength for highest 3600000000: buckets to cover it (25),
     * plus one, times the half count. */
    unsigned buckets = 1;
    for (uint64_t top = 256; top <= HIST_MAX_US; top <<= 1)
        buckets++;
    assert_int_equal((buckets + 1) * 128, HIST_BUCKETS);
    assert_true(hist_index(HIST_MAX_US) < HIST_BUCKETS);
}

/* Values 1, 1, 3, 300: buckets 1 (2), 3 (1), 278 (300 >> 1 = 150, + 128).
 * Counts 0,2,0,1, then 274 empty, then 1: ZigZag 0 -> 00, 2 -> 04, 0 -> 00,
 * 1 -> 02, -274 -> 547 = 0x223 -> a3 04 (LEB128), 1 -> 02. */
static void test_known_answer(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    hist_record(h, 1);
    hist_record(h, 1);
    hist_record(h, 3);
    hist_record(h, 300);
    uint8_t *out = malloc(HLOG_ENCODED_MAX);
    assert_non_null(out);
    size_t n = hlog_encode(h, out);
    static const uint8_t want[] = {
        0x1c, 0x84, 0x93, 0x13,                         /* cookie: V2 | word size flag */
        0x00, 0x00, 0x00, 0x07,                         /* payload length */
        0x00, 0x00, 0x00, 0x00,                         /* normalizing index offset */
        0x00, 0x00, 0x00, 0x02,                         /* significant digits */
        0,    0,    0,    0,    0,    0,    0,    1,    /* lowest discernible value */
        0,    0,    0,    0,    0xd6, 0x93, 0xa4, 0x00, /* highest trackable: 3600000000 */
        0x3f, 0xf0, 0,    0,    0,    0,    0,    0,    /* ratio: double 1.0 */
        0x00, 0x04, 0x00, 0x02, 0xa3, 0x04, 0x02,
    };
    assert_int_equal(n, sizeof want);
    assert_memory_equal(out, want, sizeof want);

    /* Compressed: cookie 0x1c849314 and the length, i.e. "HISTFAAA" in
     * base64, then zlib's header; inflated, the bytes above. */
    char *b64 = hlog_encode_b64(h);
    assert_non_null(b64);
    assert_memory_equal(b64, "HISTFAAA", 8);
    hist_t *back = new_hist();
    assert_int_equal(hlog_decode_b64(b64, strlen(b64), back, NULL, 0), 0);
    assert_memory_equal(back->counts, h->counts, sizeof h->counts);
    assert_int_equal(back->count, 4);
    assert_int_equal(back->min, 1);
    assert_int_equal(back->max, 301); /* the top of 300's bucket [300, 301] */
    assert_int_equal(hlog_max(h), 301);

    /* Empty: bucket 0 written as one zero, as HdrHistogram does. */
    hist_reset(h);
    n = hlog_encode(h, out);
    assert_int_equal(n, HLOG_HEADER + 1);
    assert_int_equal(out[HLOG_HEADER], 0);
    assert_int_equal(hlog_max(h), 0);
    free(out);
    free(b64);
    free(h);
    free(back);
}

/* Encoded by another implementation (hdr-histogram-js 3.0.1: lowest 1,
 * highest 3600000000, 2 digits; values 1, 1, 3, 300, 12345, 99999,
 * 3599999999). It writes 1 as the normalizing offset, which readers ignore. */
static void test_foreign_encoding(void **state)
{
    (void)state;
    const char *s =
        "HISTFAAAADN4nJNpmSzMwMAgwMDAwMjAwMDEAAEgNsO1yUsY4HwWBqbFLEwXuZia2ZgWyzEBAJZHBkM=";
    hist_t *h = new_hist(), *want = new_hist();
    char err[200];
    assert_int_equal(hlog_decode_b64(s, strlen(s), h, err, sizeof err), 0);
    static const uint64_t vals[] = {1, 1, 3, 300, 12345, 99999, 3599999999ULL};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++)
        hist_record(want, vals[i]);
    assert_memory_equal(h->counts, want->counts, sizeof h->counts);
    assert_int_equal(h->count, 7);
    free(h);
    free(want);
}

static uint64_t next(uint64_t *rng)
{
    *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return *rng >> 11;
}

static void test_round_trip(void **state)
{
    (void)state;
    hist_t *h = new_hist(), *back = new_hist();
    uint64_t rng = 7;
    hist_record(h, 0);
    hist_record(h, HIST_MAX_US);
    for (int i = 0; i < 200000; i++)
        hist_record(h, next(&rng) % 5000000 >> (next(&rng) % 20));
    /* Counts that need every varint length, up to the ninth byte. */
    h->counts[5] = 1ULL << 40;
    h->counts[6] = (1ULL << 62) + 12345;
    h->counts[7] = 127;
    h->counts[8] = 128;
    char *b64 = hlog_encode_b64(h);
    assert_non_null(b64);
    char err[200];
    assert_int_equal(hlog_decode_b64(b64, strlen(b64), back, err, sizeof err), 0);
    assert_memory_equal(back->counts, h->counts, sizeof h->counts);
    free(b64);
    free(h);
    free(back);
}

/* Three agents' samples, each histogram encoded and decoded, added: every
 * bucket equals the histogram of all the samples together, and so do the
 * percentiles (min and max being the exact ones, as the JSON gives them). */
static void test_merge_equals_union(void **state)
{
    (void)state;
    hist_t *part[3], *all = new_hist(), *sum = new_hist(), *dec = new_hist();
    uint64_t rng = 99;
    for (int k = 0; k < 3; k++) {
        part[k] = new_hist();
        for (int i = 0; i < 50000 + 20000 * k; i++) {
            /* different shapes: narrow, wide, with a far tail */
            uint64_t v = k == 0   ? 100 + next(&rng) % 50
                         : k == 1 ? next(&rng) % 100000
                                  : (next(&rng) % 100 == 0 ? 2000000 + next(&rng) % 1000000
                                                           : 500 + next(&rng) % 500);
            hist_record(part[k], v);
            hist_record(all, v);
        }
    }
    char err[200];
    for (int k = 0; k < 3; k++) {
        char *b64 = hlog_encode_b64(part[k]);
        assert_non_null(b64);
        assert_int_equal(hlog_decode_b64(b64, strlen(b64), dec, err, sizeof err), 0);
        hist_merge(sum, dec);
        free(b64);
    }
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        assert_int_equal(sum->counts[i], all->counts[i]);
    assert_int_equal(sum->count, all->count);
    sum->min = all->min;
    sum->max = all->max;
    static const double p[] = {0, 1, 25, 50, 75, 90, 99, 99.9, 99.99, 99.999, 100};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        assert_int_equal(hist_percentile(sum, p[i]), hist_percentile(all, p[i]));
    for (int k = 0; k < 3; k++)
        free(part[k]);
    free(all);
    free(sum);
    free(dec);
}

/* Compress raw (n bytes) as the V2 compressed form, in base64. */
static char *wrap(const uint8_t *raw, size_t n)
{
    uLongf zlen = compressBound(n);
    uint8_t *z = malloc(8 + zlen);
    assert_non_null(z);
    assert_int_equal(compress2(z + 8, &zlen, raw, n, 9), Z_OK);
    z[0] = 0x1c, z[1] = 0x84, z[2] = 0x93, z[3] = 0x14;
    z[4] = (uint8_t)(zlen >> 24), z[5] = (uint8_t)(zlen >> 16);
    z[6] = (uint8_t)(zlen >> 8), z[7] = (uint8_t)zlen;
    /* base64 by hand: the encoder under test is not used to make its input */
    static const char c[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = 8 + zlen, o = 0;
    char *s = malloc(len / 3 * 4 + 8);
    assert_non_null(s);
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)z[i] << 16 | (i + 1 < len ? (uint32_t)z[i + 1] << 8 : 0) |
                     (i + 2 < len ? z[i + 2] : 0);
        s[o++] = c[w >> 18];
        s[o++] = c[(w >> 12) & 63];
        s[o++] = i + 1 < len ? c[(w >> 6) & 63] : '=';
        s[o++] = i + 2 < len ? c[w & 63] : '=';
    }
    s[o] = '\0';
    free(z);
    return s;
}

static void expect_refused(const char *s, const char *why)
{
    hist_t *h = new_hist();
    char err[200] = "";
    assert_int_equal(hlog_decode_b64(s, strlen(s), h, err, sizeof err), -EINVAL);
    if (!strstr(err, why))
        fail_msg("'%s' does not say '%s'", err, why);
    assert_null(strchr(err, '\n'));
    free(h);
}

static void test_refused(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    hist_record(h, 5);
    uint8_t *raw = malloc(HLOG_ENCODED_MAX);
    assert_non_null(raw);
    size_t n = hlog_encode(h, raw);

    char *ok = wrap(raw, n);
    hist_t *back = new_hist();
    assert_int_equal(hlog_decode_b64(ok, strlen(ok), back, NULL, 0), 0);
    assert_int_equal(back->counts[5], 1);

    expect_refused("not base64!", "not a compressed");
    expect_refused("", "not a compressed");
    ok[strlen(ok) - 8] = '\0'; /* cut: zlib's stream ends early */
    expect_refused(ok, "");
    free(ok);

    raw[15] = 3; /* 3 significant digits: another layout */
    char *s = wrap(raw, n);
    expect_refused(s, "parameters differ");
    free(s);
    raw[15] = 2;
    raw[23] = 1000 & 0xff, raw[22] = 1000 >> 8; /* lowest 1000 */
    s = wrap(raw, n);
    expect_refused(s, "parameters differ");
    free(s);
    raw[22] = 0, raw[23] = 1;
    raw[0] = 0x1c, raw[3] = 0x12; /* a V1 cookie */
    s = wrap(raw, n);
    expect_refused(s, "not an HdrHistogram V2");
    free(s);
    raw[3] = 0x13;
    raw[7] = (uint8_t)(n - HLOG_HEADER + 5); /* payload longer than the data */
    s = wrap(raw, n);
    expect_refused(s, "truncated");
    free(s);

    /* A count beyond the last bucket: skip HIST_BUCKETS empty ones, then 1.
     * -3328 is ZigZag 6655 = 0x19ff: ff 33. */
    raw[HLOG_HEADER] = 0xff, raw[HLOG_HEADER + 1] = 0x33, raw[HLOG_HEADER + 2] = 0x02;
    raw[7] = 3;
    assert_int_equal(hlog_decode(raw, HLOG_HEADER + 3, back, NULL, 0), -EINVAL);
    free(raw);
    free(h);
    free(back);
}

typedef struct seen {
    int n;
    double start[4], len[4];
    uint64_t count[4];
} seen_t;

static int on_interval(void *ctx, double start, double len, const hist_t *h, char *err,
                       size_t errlen)
{
    (void)err, (void)errlen;
    seen_t *s = ctx;
    assert_true(s->n < 4);
    s->start[s->n] = start, s->len[s->n] = len, s->count[s->n] = h->count;
    s->n++;
    return 0;
}

static void test_interval_log(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    hist_t *h = new_hist();
    assert_int_equal(hlog_write_header(f, 1700000000.25), 0);
    hist_record(h, 1000);
    assert_int_equal(hlog_write_interval(f, 0, 1, h), 0);
    hist_record(h, 2000);
    assert_int_equal(hlog_write_interval(f, 1, 0.5, h), 0);
    rewind(f);
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    assert_non_null(strstr(text, "#[Histogram log format version 1.3]\n"));
    assert_non_null(strstr(text, "#[StartTime: 1700000000.250 (seconds since epoch), "));
    assert_non_null(strstr(text, "#[BaseTime: 1700000000.250 (seconds since epoch)]\n"));
    assert_non_null(strstr(text, "\n\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\","
                                 "\"Interval_Compressed_Histogram\"\n"));
    /* max in ms: 1000 us is in bucket [1000, 1003], 2000 in [2000, 2007] */
    assert_non_null(strstr(text, "\n0.000,1.000,1.003,HISTFAAA"));
    assert_non_null(strstr(text, "\n1.000,0.500,2.007,HISTFAAA"));

    rewind(f);
    seen_t s = {0};
    double start;
    char err[200];
    assert_int_equal(hlog_read(f, on_interval, &s, &start, err, sizeof err), 0);
    assert_int_equal(s.n, 2);
    assert_true(start == 1700000000.25);
    assert_true(s.start[0] == 1700000000.25 && s.start[1] == 1700000001.25);
    assert_true(s.len[1] == 0.5);
    assert_int_equal(s.count[0], 1);
    assert_int_equal(s.count[1], 2);
    fclose(f);

    /* A bad line is named. */
    f = tmpfile();
    fputs("#[StartTime: 5 (seconds since epoch)]\n0.0,1.0,1.0,HISTFAAA\n", f);
    rewind(f);
    assert_int_equal(hlog_read(f, on_interval, &s, &start, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "line 2"));
    fclose(f);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_is_hdr),      cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_foreign_encoding),   cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_merge_equals_union), cmocka_unit_test(test_refused),
        cmocka_unit_test(test_interval_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
