/* hlog: loadgen's histograms in HdrHistogram's exchange formats: the V2
 * encoding (compressed, base64) that the JSON carries, and the interval log
 * (--hlog) that HdrHistogram's HistogramLogReader and HistogramLogProcessor
 * read.
 *
 * hist_t's buckets are HdrHistogram's own for lowest discernible value 1,
 * highest trackable value 3600000000 and 2 significant digits: 256 unit
 * sub-buckets, then every power of two in 128 (subBucketCount 256, 25
 * buckets, countsArrayLength 3328 = HIST_BUCKETS), hist_index(v) being
 * HdrHistogram's countsArrayIndex(v). So a histogram written with those
 * parameters is read back by any HdrHistogram bucket for bucket.
 *
 * The V2 encoding, big-endian: cookie 0x1c849313, payload length,
 * normalizing index offset (0; ignored when read), significant digits (int32 each), lowest and
 * highest value (int64), integer-to-double ratio (double 1.0): 40 bytes;
 * then counts[0 .. the last non-empty bucket], each a ZigZag LEB128 varint
 * of at most 9 bytes (the ninth holds 8 bits), a run of k > 1 empty buckets
 * written as -k. Compressed: cookie 0x1c849314, the length of what follows,
 * then the encoding through zlib (level 9). Base64 of that starts "HISTFAAA". */
#ifndef LOADGEN_HLOG_H
#define LOADGEN_HLOG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"

#define HLOG_LOWEST  1
#define HLOG_HIGHEST HIST_MAX_US
#define HLOG_DIGITS  2

#define HLOG_COOKIE      0x1c849313u /* V2 base 0x1c849303 | 0x10 */
#define HLOG_COOKIE_Z    0x1c849314u /* compressed: base 0x1c849304 | 0x10 */
#define HLOG_HEADER      40
#define HLOG_ENCODED_MAX (HLOG_HEADER + 9 * HIST_BUCKETS) /* the largest encoding */
#define HLOG_MAX_RATIO   1000.0 /* values are us: the log's max column is ms */

/* The uncompressed V2 encoding of h's counts into out (HLOG_ENCODED_MAX
 * bytes). Returns its length. */
size_t hlog_encode(const hist_t *h, uint8_t *out);

/* The compressed encoding in base64, NUL-terminated, malloc'd (the caller
 * frees it). NULL when out of memory. */
char *hlog_encode_b64(const hist_t *h);

/* Read an uncompressed V2 encoding (n bytes) into h (reset first). count,
 * min and max follow from the buckets (the lowest and highest value of the
 * first and last non-empty one), sum and sumsq from their middles, as
 * HdrHistogram does. Returns 0, or -EINVAL with a one-line reason in err: not
 * V2, truncated, other parameters than loadgen's, or a value beyond 1 h. */
int hlog_decode(const uint8_t *p, size_t n, hist_t *h, char *err, size_t errlen);

/* hlog_decode for the compressed base64 form (len characters). */
int hlog_decode_b64(const char *s, size_t len, hist_t *h, char *err, size_t errlen);

/* The max an interval reports: the highest value of the last non-empty
 * bucket (HdrHistogram's getMaxValue), at most HIST_MAX_US; 0 when empty. */
uint64_t hlog_max(const hist_t *h);

/* An interval log's head: the format version, StartTime and BaseTime (both
 * start_s, seconds since the epoch: the intervals' times are relative to it)
 * and the legend. Returns 0 or -EIO. */
int hlog_write_header(FILE *f, double start_s);

/* One interval line: "start,length,max,histogram", start relative to the
 * BaseTime, max in ms (HLOG_MAX_RATIO). Returns 0, -ENOMEM or -EIO. */
int hlog_write_interval(FILE *f, double start_s, double len_s, const hist_t *h);

/* Called for each interval of a log read by hlog_read: its absolute start
 * (seconds since the epoch), length and histogram. Returns 0, or a negative
 * errno (with err filled) that stops the reading. */
typedef int (*hlog_fn)(void *ctx, double start_s, double len_s, const hist_t *h, char *err,
                       size_t errlen);

/* Read an interval log: comments ("#[StartTime: ", "#[BaseTime: " are
 * used), the legend, and interval lines (a "Tag=NAME," prefix is
 * accepted). Times are made absolute as HistogramLogReader does: BaseTime
 * plus the stamp; without a BaseTime, a stamp below a year is relative to
 * StartTime. *start_s gets StartTime (or the first interval's start; NAN for
 * a log without intervals). Returns 0, or -EINVAL (a malformed line or
 * histogram; err names the line) or fn's error. */
int hlog_read(FILE *f, hlog_fn fn, void *ctx, double *start_s, char *err, size_t errlen);

#endif
