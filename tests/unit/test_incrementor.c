/* Unit tests of the incrementor's modules: the body parsers (form and JSON,
 * keys, int64 values, content types), the aggregation map, and the database
 * layer (the registry of live writers, the int64 guard of the writes). Every
 * parsed input sits right before a guard page. */
#include <errno.h>
#include <inttypes.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <sqlite3.h>
#include <unistd.h>

#include "../lib/tlib.h"
#include "../../incrementor/agg.h"
#include "../../incrementor/db.h"
#include "../../incrementor/lag.h"
#include "../../incrementor/parse.h"
#include "../../incrementor/service.h"

/* ---- form bodies ---- */

struct form_case {
    const char *in;
    int status;      /* 0 or 400 */
    const char *key; /* expected decoded key when 0 */
    int64_t value;
    const char *err; /* expected reason (substring) when 400 */
};

static const struct form_case form_cases[] = {
    {"key=a&value=1", 0, "a", 1, NULL},
    {"value=-5&key=b", 0, "b", -5, NULL},
    {"key=a+b&value=%2B7", 0, "a b", 7, NULL},
    {"key=%C3%A9t%C3%A9&value=0", 0, "\xc3\xa9t\xc3\xa9", 0, NULL},
    {"key=a&value=9223372036854775807", 0, "a", INT64_MAX, NULL},
    {"key=a&value=-9223372036854775808", 0, "a", INT64_MIN, NULL},
    {"key=a&value=1&", 0, "a", 1, NULL},
    {"key=a&value=9223372036854775808", 400, NULL, 0, "out of int64 range"},
    {"key=a&value=-9223372036854775809", 400, NULL, 0, "out of int64 range"},
    {"key=a&value=99999999999999999999999", 400, NULL, 0, "out of int64 range"},
    {"key=a&value=1.5", 400, NULL, 0, "not an integer"},
    {"key=a&value=", 400, NULL, 0, "not an integer"},
    {"key=a&value=-", 400, NULL, 0, "not an integer"},
    {"key=a&value=0x10", 400, NULL, 0, "not an integer"},
    {"key=a&value=1%20", 400, NULL, 0, "not an integer"},
    {"key=a&value=%zz", 400, NULL, 0, "percent-encoding"},
    {"key=a", 400, NULL, 0, "missing value"},
    {"value=1", 400, NULL, 0, "missing key"},
    {"", 400, NULL, 0, "missing key"},
    {"key=&value=1", 400, NULL, 0, "empty key"},
    {"key=a&key=b&value=1", 400, NULL, 0, "key given twice"},
    {"key=a&value=1&value=2", 400, NULL, 0, "value given twice"},
    {"key=a&value=1&x=2", 400, NULL, 0, "unexpected parameter"},
    {"key&value=1", 400, NULL, 0, "no '='"},
    {"key=%0a&value=1", 400, NULL, 0, "control character"},
    {"key=a%7F&value=1", 400, NULL, 0, "control character"},
    {"key=%C2%85&value=1", 400, NULL, 0, "control character"},
    {"key=%ff&value=1", 400, NULL, 0, "not valid UTF-8"},
    {"key=%C0%AF&value=1", 400, NULL, 0, "not valid UTF-8"},
    {"key=%ED%A0%80&value=1", 400, NULL, 0, "not valid UTF-8"},
    {"key=%F4%90%80%80&value=1", 400, NULL, 0, "not valid UTF-8"},
    {"key=%E2%82&value=1", 400, NULL, 0, "not valid UTF-8"},
    {"key=%4&value=1", 400, NULL, 0, "percent-encoding"},
};

static void test_form(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof form_cases / sizeof form_cases[0]; i++) {
        const struct form_case *c = &form_cases[i];
        size_t n = strlen(c->in);
        char *in = tguard_copy(c->in, n);
        char keybuf[REQ_KEY_MAX], err[256] = "";
        req_item_t it = {0};
        int st = req_parse_form(in, n, keybuf, &it, err, sizeof err);
        if (st != c->status)
            fail_msg("case %zu '%s': status %d, want %d (%s)", i, c->in, st, c->status, err);
        if (st == 0) {
            assert_int_equal(it.key_len, strlen(c->key));
            assert_memory_equal(it.key, c->key, it.key_len);
            assert_true(it.value == c->value);
        } else if (!strstr(err, c->err)) {
            fail_msg("case %zu '%s': reason '%s', want '%s'", i, c->in, err, c->err);
        }
        tguard_free(in, n);
    }
}

static void test_form_key_length(void **state)
{
    (void)state;
    char body[2048], keybuf[REQ_KEY_MAX], err[256];
    req_item_t it;
    /* 256 bytes is the limit, counted after decoding. */
    for (int len = 255; len <= 257; len++) {
        int n = snprintf(body, sizeof body, "key=%0*d&value=1", len, 0);
        char *in = tguard_copy(body, (size_t)n);
        int st = req_parse_form(in, (size_t)n, keybuf, &it, err, sizeof err);
        assert_int_equal(st, len <= 256 ? 0 : 400);
        tguard_free(in, (size_t)n);
    }
    /* 256 multi-byte characters encoded: 512 bytes decoded, too long. */
    int n = snprintf(body, sizeof body, "value=1&key=");
    for (int i = 0; i < 128; i++)
        n += snprintf(body + n, sizeof body - (size_t)n, "%%C3%%A9");
    assert_int_equal(req_parse_form(body, (size_t)n, keybuf, &it, err, sizeof err), 0);
    assert_int_equal(it.key_len, 256);
    n += snprintf(body + n, sizeof body - (size_t)n, "x");
    assert_int_equal(req_parse_form(body, (size_t)n, keybuf, &it, err, sizeof err), 400);
    assert_non_null(strstr(err, "longer than 256"));
}

/* ---- JSON bodies ---- */

struct json_case {
    const char *in;
    int status;
    size_t n; /* items when 0 */
    const char *err;
};

static const struct json_case json_cases[] = {
    {"{\"a\": 1}", 0, 1, NULL},
    {"{\"a\": 1, \"b\": -2, \"c d\": 0}", 0, 3, NULL},
    {"{\"\\u00e9\": 9223372036854775807}", 0, 1, NULL},
    {"{\"a\": -9223372036854775808}", 0, 1, NULL},
    {"{\"a\": 9223372036854775808}", 400, 0, "out of int64 range"},
    {"{\"a\": 1.0}", 400, 0, "not an integer"},
    {"{\"a\": \"1\"}", 400, 0, "not an integer"},
    {"{\"a\": null}", 400, 0, "not an integer"},
    {"{\"a\": 1e3}", 400, 0, "not an integer"},
    {"{\"a\": 1, \"a\": 2}", 400, 0, "duplicate"},
    {"{}", 400, 0, "missing key"},
    {"[1]", 400, 0, "must be an object"},
    {"7", 400, 0, "bad JSON"},
    {"{\"a\": 1", 400, 0, "bad JSON"},
    {"", 400, 0, "bad JSON"},
    {"{\"\": 1}", 400, 0, "empty key"},
    {"{\"a\\n\": 1}", 400, 0, "control character"},
    {"{\"a\\u0000b\": 1}", 400, 0, ""},
    {"{\"\xff\": 1}", 400, 0, "bad JSON"},
};

static void test_json(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof json_cases / sizeof json_cases[0]; i++) {
        const struct json_case *c = &json_cases[i];
        size_t len = strlen(c->in);
        char *in = tguard_copy(c->in, len ? len : 1);
        char err[256] = "";
        json_t *root = NULL;
        req_item_t *items = NULL;
        size_t n = 0;
        int st = req_parse_json(len ? in : "", len, &root, &items, &n, err, sizeof err);
        if (st != c->status)
            fail_msg("case %zu '%s': status %d, want %d (%s)", i, c->in, st, c->status, err);
        if (st == 0) {
            assert_int_equal(n, c->n);
            json_decref(root);
            free(items);
        } else if (!strstr(err, c->err)) {
            fail_msg("case %zu '%s': reason '%s', want '%s'", i, c->in, err, c->err);
        }
        tguard_free(in, len ? len : 1);
    }
}

static void test_json_values(void **state)
{
    (void)state;
    const char *in = "{\"x\": -3, \"y\": 9223372036854775807}";
    char err[256];
    json_t *root;
    req_item_t *items;
    size_t n;
    assert_int_equal(req_parse_json(in, strlen(in), &root, &items, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        if (items[i].key_len == 1 && items[i].key[0] == 'x')
            assert_true(items[i].value == -3);
        else
            assert_true(items[i].value == INT64_MAX);
    }
    json_decref(root);
    free(items);
}

/* ---- small parsers ---- */

static void test_i64(void **state)
{
    (void)state;
    int64_t v;
    struct {
        const char *s;
        int rc;
        int64_t v;
    } cases[] = {
        {"0", 0, 0},
        {"-0", 0, 0},
        {"+12", 0, 12},
        {"007", 0, 7},
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", -ERANGE, 0},
        {"-9223372036854775809", -ERANGE, 0},
        {"184467440737095516160", -ERANGE, 0},
        {"99999999999999999999x", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"-", -EINVAL, 0},
        {"+", -EINVAL, 0},
        {" 1", -EINVAL, 0},
        {"1 ", -EINVAL, 0},
        {"--1", -EINVAL, 0},
        {"1e3", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].s);
        char *in = tguard_copy(cases[i].s, n ? n : 1);
        int rc = req_parse_i64(n ? in : "", n, &v);
        if (rc != cases[i].rc)
            fail_msg("'%s': %d, want %d", cases[i].s, rc, cases[i].rc);
        if (rc == 0)
            assert_true(v == cases[i].v);
        tguard_free(in, n ? n : 1);
    }
}

static void test_content_kind(void **state)
{
    (void)state;
    struct {
        const char *ct;
        int kind;
    } cases[] = {
        {"application/x-www-form-urlencoded", REQ_FORM},
        {"Application/X-WWW-Form-Urlencoded; charset=utf-8", REQ_FORM},
        {"application/json", REQ_JSON},
        {"application/json;charset=utf-8", REQ_JSON},
        {"application/jsonx", 0},
        {"application/json ; charset=utf-8", REQ_JSON},
        {"APPLICATION/JSON", REQ_JSON},
        {"application/jso", 0},
        {"application/x-www-form-urlencode", 0},
        {"application/x-www-form-urlencodedx", 0},
        {" application/json", 0},
        {"text/plain", 0},
        {"multipart/form-data", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_int_equal(req_content_kind(cases[i].ct, strlen(cases[i].ct)), cases[i].kind);
    assert_int_equal(req_content_kind(NULL, 0), 0);
}

/* ---- Idempotency-Key ---- */

struct idem_case {
    const char *value;
    int status;
    const char *err;
};

static void test_idem_key(void **state)
{
    (void)state;
    char long_ok[REQ_IDEM_MAX + 1], too_long[REQ_IDEM_MAX + 2];
    memset(long_ok, 'k', REQ_IDEM_MAX);
    long_ok[REQ_IDEM_MAX] = 0;
    memset(too_long, 'k', REQ_IDEM_MAX + 1);
    too_long[REQ_IDEM_MAX + 1] = 0;
    const struct idem_case cases[] = {
        {"8e03978e-40d5-43e8-bc93-6894a57f9324", 0, NULL},
        {"\"quoted\"", 0, NULL}, /* opaque: the quotes are part of it */
        {"!~", 0, NULL},
        {long_ok, 0, NULL},
        {too_long, 400, "longer than 255"},
        {"", 400, "empty"},
        {"a b", 400, "visible ASCII"},
        {"a\tb", 400, "visible ASCII"},
        {"a\x7f", 400, "visible ASCII"},
        {"caf\xc3\xa9", 400, "visible ASCII"},
        {"\x01", 400, "visible ASCII"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].value);
        char *v = tguard_copy(cases[i].value, n ? n : 1);
        http_header_t h[2] = {{"Content-Type", 12, "application/json", 16},
                              {i % 2 ? "idempotency-key" : "Idempotency-Key", 15, v, n}};
        const char *key = NULL;
        size_t len = 99;
        char err[256] = "";
        int st = req_idem_key(h, 2, &key, &len, err, sizeof err);
        if (st != cases[i].status)
            fail_msg("case %zu: status %d, want %d (%s)", i, st, cases[i].status, err);
        if (st == 0) {
            assert_int_equal(len, n);
            assert_ptr_equal(key, v);
        } else if (!strstr(err, cases[i].err)) {
            fail_msg("case %zu: reason '%s', want '%s'", i, err, cases[i].err);
        }
        tguard_free(v, n ? n : 1);
    }
    /* None: no key. Twice: refused, even when both are equal. */
    http_header_t h[3] = {
        {"Host", 4, "t", 1}, {"Idempotency-Key", 15, "a", 1}, {"IDEMPOTENCY-KEY", 15, "a", 1}};
    const char *key;
    size_t len = 99;
    char err[256];
    assert_int_equal(req_idem_key(h, 1, &key, &len, err, sizeof err), 0);
    assert_int_equal(len, 0);
    assert_int_equal(req_idem_key(h, 3, &key, &len, err, sizeof err), 400);
    assert_non_null(strstr(err, "twice"));
}

/* Windows keep to a fixed clock: a taker that wakes late (a CPU quota's
 * stall) does not lengthen the next window by its lateness, one woken early
 * (a kick) closes the new window when the last was due, and one a whole
 * window or more behind starts afresh. Counting from the wake-up, as
 * before, gave 1160 for the late one. */
static void test_next_window(void **state)
{
    (void)state;
    assert_int_equal(svc_next_window(1000, 1000, 100), 1100); /* on time */
    assert_int_equal(svc_next_window(1000, 1060, 100), 1100); /* 60 ms late */
    assert_int_equal(svc_next_window(1000, 1099, 100), 1100);
    assert_int_equal(svc_next_window(1000, 950, 100), 1000);  /* kicked */
    assert_int_equal(svc_next_window(1000, 1100, 100), 1200); /* a window behind */
    assert_int_equal(svc_next_window(1000, 1250, 100), 1350);
}

static void test_fingerprint(void **state)
{
    (void)state;
    req_item_t ab[] = {{"a", 1, 1}, {"b", 1, -2}};
    req_item_t ba[] = {{"b", 1, -2}, {"a", 1, 1}};
    req_item_t a1[] = {{"a", 1, 1}};
    req_item_t a2[] = {{"a", 1, 2}};
    req_item_t c1[] = {{"c", 1, 1}};
    req_item_t a1b0[] = {{"a", 1, 1}, {"b", 1, 0}};
    req_item_t swapped[] = {{"a", 1, -2}, {"b", 1, 1}};
    assert_true(req_fingerprint(ab, 2) == req_fingerprint(ba, 2));
    assert_true(req_fingerprint(a1, 1) == req_fingerprint(a1, 1));
    assert_true(req_fingerprint(a1, 1) != req_fingerprint(a2, 1));
    assert_true(req_fingerprint(a1, 1) != req_fingerprint(c1, 1));
    assert_true(req_fingerprint(a1, 1) != req_fingerprint(a1b0, 2));
    assert_true(req_fingerprint(ab, 2) != req_fingerprint(swapped, 2));
    /* The same increment parsed from a form and from JSON. */
    char keybuf[REQ_KEY_MAX], err[256];
    req_item_t form, *items;
    json_t *root;
    size_t n;
    const char *f = "key=a&value=1", *j = "{\"a\": 1}";
    assert_int_equal(req_parse_form(f, strlen(f), keybuf, &form, err, sizeof err), 0);
    assert_int_equal(req_parse_json(j, strlen(j), &root, &items, &n, err, sizeof err), 0);
    assert_true(req_fingerprint(&form, 1) == req_fingerprint(items, n));
    json_decref(root);
    free(items);
}

/* ---- the aggregation map ---- */

static void test_agg_sums(void **state)
{
    (void)state;
    agg_t m;
    agg_init(&m);
    char key[32];
    /* Enough keys to grow the table several times. */
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 5000; i++) {
            int n = snprintf(key, sizeof key, "key-%d", i);
            agg_entry_t *e = agg_get(&m, key, (size_t)n);
            assert_non_null(e);
            e->sum += i;
            e->count++;
        }
    assert_int_equal(m.len, 5000);
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof key, "key-%d", i);
        agg_entry_t *e = agg_find(&m, key, (size_t)n);
        assert_non_null(e);
        assert_true(e->sum == 3 * i);
        assert_int_equal(e->count, 3);
        assert_memory_equal(agg_key(&m, e), key, (size_t)n);
    }
    assert_null(agg_find(&m, "key-5000", 8));
    assert_null(agg_find(&m, "key-1", 4)); /* a prefix is another key */

    /* Iteration visits every entry once, in the order they were made,
     * across the table's growths. */
    size_t seen = 0;
    agg_entry_t *e;
    for (size_t i = 0; (e = agg_next(&m, &i));) {
        int n = snprintf(key, sizeof key, "key-%zu", seen);
        assert_int_equal(e->key_len, n);
        assert_memory_equal(agg_key(&m, e), key, (size_t)n);
        assert_true(e->sum == 3 * (int64_t)seen);
        seen++;
    }
    assert_int_equal(seen, 5000);

    /* Cleared: empty, and reusable at its size; the next window's entries
     * alone are visited, zeroed when made. */
    size_t cap = m.cap;
    agg_clear(&m);
    assert_int_equal(m.len, 0);
    assert_null(agg_find(&m, "key-1", 5));
    assert_null(agg_next(&m, &(size_t){0}));
    static const char *const next[] = {"key-4999", "new", "key-1"};
    for (int k = 0; k < 3; k++) {
        e = agg_get(&m, next[k], strlen(next[k]));
        assert_non_null(e);
        assert_true(e->sum == 0 && e->count == 0);
        e->sum = k + 1;
    }
    assert_int_equal(m.cap, cap);
    seen = 0;
    for (size_t i = 0; (e = agg_next(&m, &i)); seen++) {
        assert_memory_equal(agg_key(&m, e), next[seen], strlen(next[seen]));
        assert_true(e->sum == (int64_t)seen + 1);
    }
    assert_int_equal(seen, 3);
    assert_null(agg_find(&m, "key-2", 5));
    assert_true(agg_find(&m, "key-1", 5)->sum == 3);
    agg_free(&m);
}

static void test_agg_binary_keys(void **state)
{
    (void)state;
    agg_t m = {0};
    /* Keys are bytes with a length: no NUL termination assumed. */
    agg_get(&m, "a\0b", 3)->sum = 1;
    agg_get(&m, "a\0c", 3)->sum = 2;
    agg_get(&m, "a", 1)->sum = 3;
    assert_true(agg_find(&m, "a\0b", 3)->sum == 1);
    assert_true(agg_find(&m, "a\0c", 3)->sum == 2);
    assert_true(agg_find(&m, "a", 1)->sum == 3);
    assert_int_equal(m.len, 3);
    agg_free(&m);
    assert_null(agg_find(&m, "a", 1));
}

static void test_lag_quantiles(void **state)
{
    (void)state;
    static lag_hist_t h;
    memset(&h, 0, sizeof h);
    assert_int_equal(lag_quantile(&h, 0.99), 0);
    lag_add(&h, 10, 98);
    lag_add(&h, 150, 1);
    lag_add(&h, 120000, 1); /* beyond the buckets: the maximum */
    lag_add(&h, -3, 0);     /* nothing */
    assert_int_equal(h.n, 100);
    assert_int_equal(lag_quantile(&h, 0.5), 10);
    assert_int_equal(lag_quantile(&h, 0.98), 10);
    assert_int_equal(lag_quantile(&h, 0.99), 150);
    assert_int_equal(lag_quantile(&h, 1.0), 120000);
    assert_int_equal(h.max, 120000);
}

/* ---- the database ---- */

static char db_dir[256];

/* A fresh database path in a temporary directory (removed by db_teardown). */
static const char *db_file(const char *name)
{
    static char p[512];
    if (!db_dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(db_dir, sizeof db_dir, "%s/unit-incr.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        assert_non_null(mkdtemp(db_dir));
    }
    snprintf(p, sizeof p, "%s/%s.db", db_dir, name);
    return p;
}

static int rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb, (void)type, (void)ftw;
    return remove(path);
}

static int db_teardown(void **state)
{
    (void)state;
    if (db_dir[0] && nftw(db_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS) < 0)
        return -1;
    db_dir[0] = 0;
    return 0;
}

static int64_t others(db_t *d)
{
    int64_t n = -1;
    assert_int_equal(db_other_buffered(d, &n), 0);
    return n;
}

/* Writers are told apart by something the database file's users share, not
 * by their PID: two writers with one PID (here: one process; in production:
 * two containers whose incrementors are both PID 1, or a PID that another
 * namespace reuses) are two writers, and each counts the other. */
static void test_db_writers_one_pid(void **state)
{
    (void)state;
    const char *path = db_file("writers");
    char err[512];
    db_t *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(db_open_writer(&a, path, 0, err, sizeof err), 0);
    assert_int_equal(others(a), 0);
    assert_int_equal(db_open_writer(&b, path, 0, err, sizeof err), 0);
    assert_int_equal(db_open_writer(&c, path, 1, err, sizeof err), 0); /* durable */
    assert_int_equal(others(a), 1);                                    /* b; c is durable */
    assert_int_equal(others(b), 1);
    assert_int_equal(others(c), 2);
    db_close(b); /* a writer that is gone is not counted */
    assert_int_equal(others(a), 0);
    assert_int_equal(others(c), 1);
    assert_int_equal(db_open_writer(&b, path, 0, err, sizeof err), 0);
    assert_int_equal(others(a), 1);
    db_close(a);
    db_close(b);
    db_close(c);

    /* Slots with gaps: buffered and durable writers interleaved, some gone;
     * a new writer takes a free slot. */
    const int durable[8] = {0, 1, 0, 0, 1, 0, 1, 0};
    db_t *w[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(db_open_writer(&w[i], path, durable[i], err, sizeof err), 0);
    assert_int_equal(others(w[0]), 4);
    assert_int_equal(others(w[1]), 5);
    db_close(w[2]);
    db_close(w[5]);
    db_close(w[6]);
    assert_int_equal(others(w[0]), 2); /* w3, w7 */
    assert_int_equal(others(w[4]), 3); /* w0, w3, w7 */
    assert_int_equal(db_open_writer(&w[2], path, 0, err, sizeof err), 0);
    assert_int_equal(others(w[0]), 3);
    assert_int_equal(others(w[2]), 3);
    db_close(w[0]);
    assert_int_equal(others(w[2]), 2);
    for (int i = 1; i < 8; i++)
        if (i != 5 && i != 6)
            db_close(w[i]);
}

static const char *value_type(const char *path, const char *key)
{
    static char type[16];
    char sql[64];
    snprintf(sql, sizeof sql, "SELECT typeof(value) FROM counters WHERE key = '%s'", key);
    assert_int_equal(tincr_db_text(path, sql, type, sizeof type), 0);
    return type;
}

/* SQLite turns an int64 overflow in `value + ?` into a REAL: whatever the
 * caller believed, a write that would leave int64 fails and changes
 * nothing. */
static void test_db_add_never_real(void **state)
{
    (void)state;
    const char *path = db_file("real");
    char err[512];
    db_t *d = NULL;
    int64_t v = 0;
    assert_int_equal(db_open_writer(&d, path, 1, err, sizeof err), 0);
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_add(d, "k", 1, INT64_MAX - 1), 0);
    assert_int_equal(db_add(d, "m", 1, INT64_MIN + 1), 0);
    assert_int_equal(db_commit(d), 0);
    assert_int_equal(db_begin(d), 0);
    assert_true(db_add(d, "k", 1, 2) < 0);
    db_rollback(d);
    assert_int_equal(db_begin(d), 0);
    assert_true(db_add(d, "m", 1, -2) < 0);
    db_rollback(d);
    assert_int_equal(db_value(d, "k", 1, &v), 1);
    assert_true(v == INT64_MAX - 1);
    assert_int_equal(db_value(d, "m", 1, &v), 1);
    assert_true(v == INT64_MIN + 1);
    assert_string_equal(value_type(path, "k"), "integer");
    assert_string_equal(value_type(path, "m"), "integer");
    /* Up to the limit is fine. */
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_add(d, "k", 1, 1), 0);
    assert_int_equal(db_commit(d), 0);
    assert_int_equal(db_value(d, "k", 1, &v), 1);
    assert_true(v == INT64_MAX);
    db_close(d);
}

static int64_t red(db_t *d)
{
    int64_t n = -1;
    assert_int_equal(db_red(d, &n), 0);
    return n;
}

static void add_one(db_t *d, const char *key, int64_t delta)
{
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_add(d, key, strlen(key), delta), 0);
    assert_int_equal(db_commit(d), 0);
}

/* The int64 guard by the table's make: a new table is STRICT and needs no
 * trigger; one made by an earlier version keeps its CHECK and gets none;
 * one with neither gets the triggers. Each refuses a write that would
 * leave int64. */
static void test_int64_guard_by_table(void **state)
{
    (void)state;
    static const struct {
        const char *name, *table, *triggers;
    } cases[] = {
        {"guard-new", NULL, "0"},
        {"guard-check",
         "CREATE TABLE counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL"
         " CHECK(typeof(value) = 'integer')) WITHOUT ROWID",
         "0"},
        {"guard-none", "CREATE TABLE counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL)", "2"},
        {"guard-strict",
         "CREATE TABLE counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT", "0"},
        {"guard-strict-any",
         "CREATE TABLE counters(key TEXT PRIMARY KEY, value ANY NOT NULL) STRICT", "2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = db_file(cases[i].name);
        char err[512], got[32];
        db_t *d = NULL;
        int64_t v = 0;
        if (cases[i].table)
            assert_int_equal(tincr_db_exec(path, cases[i].table), 0);
        assert_int_equal(db_open_writer(&d, path, DB_BUFFERED, err, sizeof err), 0);
        assert_int_equal(tincr_db_text(path,
                                       "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
                                       " AND name LIKE 'incrementor_int64_%'",
                                       got, sizeof got),
                         0);
        assert_string_equal(got, cases[i].triggers);
        add_one(d, "k", INT64_MAX);
        assert_int_equal(db_begin(d), 0);
        assert_true(db_add(d, "k", 1, 1) < 0);
        db_rollback(d);
        assert_int_equal(db_value(d, "k", 1, &v), 1);
        assert_true(v == INT64_MAX);
        assert_string_equal(value_type(path, "k"), "integer");
        db_close(d);
    }
}

/* 'red' (some counter outside +-DB_GREEN) is exact whoever writes: our
 * UPSERTs both ways across the edge, another program's UPDATE, INSERT and
 * DELETE; it is asked of the partial index (the query plan says so); and a
 * database of the older schema (a count in incrementor_meta kept by
 * triggers) loses its triggers at the first open, its count set to 2^62
 * so that an older writer still on it stays on its slow path. */
static void test_db_red(void **state)
{
    (void)state;
    const char *path = db_file("red");
    char err[512], text[64];
    db_t *d = NULL;
    snprintf(text, sizeof text, "-%" PRId64 " AND %" PRId64, DB_GREEN, DB_GREEN);
    assert_non_null(strstr(DB_RED_WHERE, text));
    /* The older schema, with a red counter and a count that is wrong on
     * purpose: it must not be what db_red reads. */
    assert_int_equal(
        tincr_db_exec(
            path, "CREATE TABLE counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
                  " WITHOUT ROWID;"
                  "INSERT INTO counters VALUES('r', 4611686018427387904);"
                  "CREATE TABLE incrementor_meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                  "INSERT INTO incrementor_meta VALUES('red', 5);"
                  "CREATE TRIGGER incrementor_red_ins AFTER INSERT ON counters BEGIN"
                  " UPDATE incrementor_meta SET value = value + 1 WHERE name = 'red'; END;"
                  "CREATE TRIGGER incrementor_red_upd AFTER UPDATE OF value ON counters BEGIN"
                  " UPDATE incrementor_meta SET value = value + 1 WHERE name = 'red'; END;"
                  "CREATE TRIGGER incrementor_red_del AFTER DELETE ON counters BEGIN"
                  " UPDATE incrementor_meta SET value = value - 1 WHERE name = 'red'; END;"),
        0);
    assert_int_equal(db_open_writer(&d, path, DB_BUFFERED, err, sizeof err), 0);
    assert_int_equal(tincr_db_text(path,
                                   "SELECT (SELECT count(*) FROM sqlite_master WHERE name LIKE"
                                   " 'incrementor_red_%') || ' ' || (SELECT value FROM"
                                   " incrementor_meta WHERE name = 'red')",
                                   text, sizeof text),
                     0);
    assert_string_equal(text, "0 4611686018427387904"); /* no trigger; red for old writers */
    assert_int_equal(red(d), 1);                        /* 'r', there before the index */
    assert_int_equal(tincr_db_exec(path, "DELETE FROM counters WHERE key = 'r'"), 0);
    assert_int_equal(red(d), 0);

    /* The plan: a seek in the partial index, never a scan of counters. */
    sqlite3 *h;
    sqlite3_stmt *st;
    int indexed = 0;
    assert_int_equal(sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "EXPLAIN QUERY PLAN " DB_RED_QUERY, -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *detail = (const char *)sqlite3_column_text(st, 3);
        indexed += detail && strstr(detail, "INDEX incrementor_red") != NULL;
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    assert_int_equal(indexed, 1);

    add_one(d, "a", DB_GREEN); /* the last value that is not red */
    add_one(d, "b", -DB_GREEN);
    assert_int_equal(red(d), 0);
    add_one(d, "a", 1);
    assert_int_equal(red(d), 1);
    add_one(d, "a", -1);
    assert_int_equal(red(d), 0);
    add_one(d, "b", -1);
    assert_int_equal(red(d), 1);
    /* In the transaction that makes it red, before its commit (flush.c
     * reads it there). */
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_add(d, "b", 1, 1), 0);
    assert_int_equal(red(d), 0);
    assert_int_equal(db_add(d, "c", 1, INT64_MAX), 0);
    assert_int_equal(red(d), 1);
    db_rollback(d);
    assert_int_equal(red(d), 1); /* b is still -2^61 - 1 */

    assert_int_equal(tincr_db_exec(path, "UPDATE counters SET value = 0 WHERE key = 'b'"), 0);
    assert_int_equal(red(d), 0);
    assert_int_equal(tincr_db_exec(path, "INSERT INTO counters VALUES('x', -9223372036854775808)"),
                     0);
    assert_int_equal(red(d), 1);
    assert_int_equal(tincr_db_exec(path, "DELETE FROM counters WHERE key = 'x'"), 0);
    assert_int_equal(red(d), 0);
    db_close(d);
}

/* db_add_rows writes every row, whole statements of DB_ROWS and the rest
 * one by one, a key repeated within one statement included; a row that
 * would leave int64 fails the call, and the rollback leaves nothing. */
static void test_db_add_rows(void **state)
{
    (void)state;
    const char *path = db_file("rows");
    char err[512];
    db_t *d = NULL;
    assert_int_equal(db_open_writer(&d, path, DB_BUFFERED, err, sizeof err), 0);
    enum { N = 2 * DB_ROWS + 5 };
    static char keys[N][8];
    db_row_t rows[N];
    for (int i = 0; i < N; i++) {
        /* k0..k9 again and again: repeats within a statement and across. */
        int len = snprintf(keys[i], sizeof keys[i], "k%d", i % 10);
        rows[i] = (db_row_t){keys[i], (size_t)len, i + 1};
    }
    size_t sizes[] = {0, 1, DB_ROWS - 1, DB_ROWS, DB_ROWS + 1, N};
    int64_t want[10] = {0};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        assert_int_equal(db_begin(d), 0);
        assert_int_equal(db_add_rows(d, rows, sizes[t]), 0);
        assert_int_equal(db_commit(d), 0);
        for (size_t i = 0; i < sizes[t]; i++)
            want[i % 10] += rows[i].delta;
        for (int k = 0; k < 10; k++) {
            int64_t v = 0;
            int found = db_value(d, keys[k], strlen(keys[k]), &v);
            assert_int_equal(found, want[k] != 0);
            assert_true(v == want[k]);
        }
    }
    /* The second statement's last row leaves int64. */
    rows[2 * DB_ROWS - 1].delta = INT64_MAX;
    assert_int_equal(db_begin(d), 0);
    assert_true(db_add_rows(d, rows, N) < 0);
    db_rollback(d);
    for (int k = 0; k < 10; k++) {
        int64_t v = 0;
        assert_int_equal(db_value(d, keys[k], strlen(keys[k]), &v), 1);
        assert_true(v == want[k]);
    }
    db_close(d);
}

/* svc_write_sums writes a batch's rows in the table's key order (SQLite's
 * BINARY: bytes, then the shorter first), whatever order the map holds
 * them in: a statement's rows then share their pages. A trigger logs the
 * order of the writes. An empty batch writes nothing (under UBSan: and
 * sorts nothing, its array being NULL). */
static void test_write_sums_in_key_order(void **state)
{
    (void)state;
    const char *path = db_file("order");
    char err[512];
    svc_t svc = {0};
    assert_int_equal(db_open_writer(&svc.db, path, DB_BUFFERED, err, sizeof err), 0);
    assert_int_equal(tincr_db_exec(path, "CREATE TABLE log(k TEXT);"
                                         "CREATE TRIGGER log_ins AFTER INSERT ON counters"
                                         " BEGIN INSERT INTO log VALUES(new.key); END;"
                                         "CREATE TRIGGER log_upd AFTER UPDATE ON counters"
                                         " BEGIN INSERT INTO log VALUES(new.key); END;"),
                     0);
    agg_t m;
    agg_init(&m);
    uint64_t none = 0, no_rows = 0; /* an empty batch, before any row: nothing to sort */
    assert_int_equal(db_begin(svc.db), 0);
    assert_int_equal(svc_write_sums(&svc, &m, &none, &no_rows), 0);
    db_rollback(svc.db);
    assert_true(none == 0 && no_rows == 0);
    enum { N = 3 * DB_ROWS + 7 };
    char key[32];
    for (int i = 0; i < N; i++) {
        /* Scrambled, with keys that prefix others ("k1", "k10"), a byte
         * past ASCII, and keys longer than the 8 bytes the sort looks at
         * first, some sharing them. */
        int n = snprintf(key, sizeof key,
                         i % 7 == 0    ? "shared prefix %d"
                         : i % 11 == 0 ? "shared prefix%d"
                         : i % 5       ? "k%d"
                                       : "k%d\xe9",
                         (i * 37) % N);
        agg_entry_t *e = agg_get(&m, key, (size_t)n);
        assert_non_null(e);
        e->sum = i + 1;
        e->count = 1;
    }
    agg_get(&m, "deferred, then refused", 22); /* no increments: no row */
    for (int pass = 0; pass < 2; pass++) {     /* inserts, then updates */
        uint64_t applied = 0, rows = 0;
        assert_int_equal(db_begin(svc.db), 0);
        assert_int_equal(svc_write_sums(&svc, &m, &applied, &rows), 0);
        assert_int_equal(db_commit(svc.db), 0);
        assert_true(applied == N && rows == N);
    }
    char got[64], want[64], sql[256];
    assert_int_equal(tincr_db_text(path, "SELECT count(*) FROM log", got, sizeof got), 0);
    snprintf(want, sizeof want, "%d", 2 * N);
    assert_string_equal(got, want);
    /* Each pass in key order: every row's key is greater than the last. */
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM log a JOIN log b ON b.rowid = a.rowid + 1"
             " WHERE b.k <= a.k AND a.rowid <> %d",
             N);
    assert_int_equal(tincr_db_text(path, sql, got, sizeof got), 0);
    assert_string_equal(got, "0");

    /* Keys of 1 to 12 bytes over three byte values: long runs of shared
     * prefixes, and every one of the first 8 bytes deciding somewhere. */
    agg_free(&m);
    agg_init(&m);
    assert_int_equal(tincr_db_exec(path, "DELETE FROM log"), 0);
    uint64_t x = 12345;
    for (int i = 0; i < 2000; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t len = 1 + (size_t)(x >> 60) % 12;
        for (size_t k = 0; k < len; k++)
            key[k] = "ab\xe9"[(x >> (4 * k)) % 3];
        agg_entry_t *e = agg_get(&m, key, len);
        assert_non_null(e);
        e->sum = 1;
        e->count = 1;
    }
    uint64_t applied = 0, nrows = 0;
    assert_int_equal(db_begin(svc.db), 0);
    assert_int_equal(svc_write_sums(&svc, &m, &applied, &nrows), 0);
    assert_int_equal(db_commit(svc.db), 0);
    assert_true(nrows == m.len && nrows > 500);
    assert_int_equal(tincr_db_text(path,
                                   "SELECT count(*) FROM log a JOIN log b ON b.rowid = a.rowid + 1"
                                   " WHERE b.k <= a.k",
                                   got, sizeof got),
                     0);
    assert_string_equal(got, "0");
    agg_free(&m);
    free(svc.rows);
    free(svc.order);
    db_close(svc.db);
}

/* db_checkpoint on its own connection copies the WAL, and once the WAL is
 * past DB_WAL_RESTART frames the writer's next commit starts it over (the
 * checkpointer's connection used to do nothing: it had never read). */
static void test_db_checkpoint_restarts_wal(void **state)
{
    (void)state;
    const char *path = db_file("ckpt");
    char err[512], key[16];
    db_t *d = NULL, *ck = NULL;
    assert_int_equal(db_open_writer(&d, path, DB_BUFFERED, err, sizeof err), 0);
    assert_int_equal(db_open_checkpointer(&ck, path, err, sizeof err), 0);
    int i = 0, last = 0;
    while (db_wal_frames(d) < DB_WAL_RESTART) {
        assert_true(db_wal_frames(d) >= last); /* nothing restarts it meanwhile */
        last = db_wal_frames(d);
        int len = snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(db_begin(d), 0);
        assert_int_equal(db_add(d, key, (size_t)len, ++i), 0);
        assert_int_equal(db_commit(d), 0);
    }
    assert_int_equal(db_checkpoint(ck), 0);
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_add(d, "k0", 2, 1), 0);
    assert_int_equal(db_commit(d), 0);
    assert_in_range(db_wal_frames(d), 1, 10);
    int64_t v = 0;
    assert_int_equal(db_value(d, "k0", 2, &v), 1);
    assert_true(v == 2);

    /* A reader holding an old snapshot: the RESTART gives up after
     * DB_RESTART_WAIT_MS (not the 5 s busy timeout, which the writer
     * waiting on it would nearly reach), and the writer goes on. */
    sqlite3 *r = NULL;
    assert_int_equal(sqlite3_open(path, &r), SQLITE_OK);
    assert_int_equal(sqlite3_exec(r, "BEGIN; SELECT count(*) FROM counters", NULL, NULL, NULL),
                     SQLITE_OK);
    while (db_wal_frames(d) < DB_WAL_RESTART) {
        int len = snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(db_begin(d), 0);
        assert_int_equal(db_add(d, key, (size_t)len, ++i), 0);
        assert_int_equal(db_commit(d), 0);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(db_checkpoint(ck), -EBUSY);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_true(ms < 10 * DB_RESTART_WAIT_MS);
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_add(d, "k0", 2, 1), 0);
    assert_int_equal(db_commit(d), 0);
    assert_true(db_wal_frames(d) > DB_WAL_RESTART); /* not restarted under the reader */
    sqlite3_exec(r, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(r);
    assert_int_equal(db_checkpoint(ck), 0); /* the reader gone, it restarts */
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_add(d, "k0", 2, 1), 0);
    assert_int_equal(db_commit(d), 0);
    assert_in_range(db_wal_frames(d), 1, 10);
    db_close(ck);
    db_close(d);
}

/* Keys are found while recorded after the given time, expire, and are
 * trimmed to the bound oldest first; the count the triggers keep stays
 * exact through replacements. */
static void test_db_idempotency(void **state)
{
    (void)state;
    const char *path = db_file("idem");
    char err[512];
    db_t *d = NULL;
    int64_t fp = 0, evicted = -1, kept = -1;
    int status = 0;
    assert_int_equal(db_open_writer(&d, path, 1, err, sizeof err), 0);
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_idem_put(d, "k1", 2, 11, 200, 1000), 0);
    assert_int_equal(db_idem_put(d, "k2", 2, 22, 422, 2000), 0);
    assert_int_equal(db_idem_put(d, "k3", 2, -33, 200, 3000), 0);
    assert_true(db_idem_put(d, "k4", 2, 44, 503, 3000) < 0); /* only answers that applied */
    /* Seen inside the transaction that wrote it. */
    assert_int_equal(db_idem_get(d, "k2", 2, 0, &fp, &status), 1);
    assert_true(fp == 22 && status == 422);
    assert_int_equal(db_commit(d), 0);
    assert_int_equal(db_idem_get(d, "k3", 2, 0, &fp, &status), 1);
    assert_true(fp == -33 && status == 200);
    assert_int_equal(db_idem_get(d, "k1", 2, 999, &fp, &status), 1);
    assert_int_equal(db_idem_get(d, "k1", 2, 1000, &fp, &status), 0); /* expired */
    assert_int_equal(db_idem_get(d, "k9", 2, 0, &fp, &status), 0);

    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_idem_trim(d, 1000, 10, &evicted, &kept), 0); /* k1 expired */
    assert_true(evicted == 0 && kept == 2);
    assert_int_equal(db_idem_put(d, "k2", 2, 23, 200, 4000), 0); /* replaces: k2 expired */
    assert_int_equal(db_idem_trim(d, 0, 2, &evicted, &kept), 0);
    assert_true(evicted == 0 && kept == 2);
    assert_int_equal(db_idem_trim(d, 0, 1, &evicted, &kept), 0); /* k3 is the oldest now */
    assert_true(evicted == 1 && kept == 1);
    assert_int_equal(db_commit(d), 0);
    assert_int_equal(db_idem_get(d, "k3", 2, 0, &fp, &status), 0);
    assert_int_equal(db_idem_get(d, "k2", 2, 0, &fp, &status), 1);
    assert_true(fp == 23 && status == 200);
    db_close(d);

    /* The count survives a reopen; a rolled-back record leaves nothing. */
    assert_int_equal(db_open_writer(&d, path, 1, err, sizeof err), 0);
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_idem_put(d, "k5", 2, 55, 200, 5000), 0);
    db_rollback(d);
    assert_int_equal(db_idem_get(d, "k5", 2, 0, &fp, &status), 0);
    assert_int_equal(db_begin(d), 0);
    assert_int_equal(db_idem_trim(d, 0, 1000, &evicted, &kept), 0);
    assert_true(evicted == 0 && kept == 1);
    db_rollback(d);
    db_close(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form),
        cmocka_unit_test(test_form_key_length),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_json_values),
        cmocka_unit_test(test_i64),
        cmocka_unit_test(test_content_kind),
        cmocka_unit_test(test_agg_sums),
        cmocka_unit_test(test_agg_binary_keys),
        cmocka_unit_test(test_lag_quantiles),
        cmocka_unit_test_teardown(test_db_writers_one_pid, db_teardown),
        cmocka_unit_test_teardown(test_db_add_never_real, db_teardown),
        cmocka_unit_test_teardown(test_db_red, db_teardown),
        cmocka_unit_test_teardown(test_int64_guard_by_table, db_teardown),
        cmocka_unit_test_teardown(test_db_add_rows, db_teardown),
        cmocka_unit_test_teardown(test_write_sums_in_key_order, db_teardown),
        cmocka_unit_test_teardown(test_db_checkpoint_restarts_wal, db_teardown),
        cmocka_unit_test(test_idem_key),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_next_window),
        cmocka_unit_test_teardown(test_db_idempotency, db_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
