/* Unit tests of incrementor/redis.c: the redis:// URL of --queue and
 * --consume, and stream ids. One line per case. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "../../incrementor/redis.h"

static void test_parse_url(void **state)
{
    (void)state;
    static const struct {
        const char *url, *host;
        int port; /* 0: refused */
    } cases[] = {
        {"redis://127.0.0.1:6379", "127.0.0.1", 6379},
        {"redis://localhost:1", "localhost", 1},
        {"redis://a:65535", "a", 65535},
        {"redis://127.0.0.1", NULL, 0},        /* no port */
        {"redis://127.0.0.1:", NULL, 0},       /* empty port */
        {"redis://127.0.0.1:0", NULL, 0},      /* out of range */
        {"redis://127.0.0.1:65536", NULL, 0},  /* out of range */
        {"redis://127.0.0.1:12x", NULL, 0},    /* not a number */
        {"redis://:6379", NULL, 0},            /* no host */
        {"http://127.0.0.1:6379", NULL, 0},    /* another scheme */
        {"redis://u@127.0.0.1:6379", NULL, 0}, /* user: not supported */
        {"redis://127.0.0.1:6379/0", NULL, 0}, /* database: not supported */
        {"", NULL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char host[64] = "";
        int port = 0;
        int rc = rds_parse_url(cases[i].url, host, sizeof host, &port);
        if (!cases[i].port) {
            assert_int_equal(rc, -EINVAL);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_string_equal(host, cases[i].host);
        assert_int_equal(port, cases[i].port);
    }
    char small[4];
    int port;
    assert_int_equal(rds_parse_url("redis://localhost:1", small, sizeof small, &port), -EINVAL);
}

static void test_parse_id(void **state)
{
    (void)state;
    uint64_t ms, seq;
    assert_int_equal(rds_parse_id("1700000000000-0", 15, &ms, &seq), 0);
    assert_true(ms == 1700000000000ULL && seq == 0);
    assert_int_equal(rds_parse_id("18446744073709551615-18446744073709551615", 41, &ms, &seq), 0);
    assert_true(ms == UINT64_MAX && seq == UINT64_MAX);
    assert_int_equal(rds_parse_id("1-2xyz", 3, &ms, &seq), 0); /* the length counts */
    assert_true(ms == 1 && seq == 2);
    assert_int_equal(rds_parse_id("18446744073709551616-0", 22, &ms, &seq), -EINVAL);
    assert_int_equal(rds_parse_id("12", 2, &ms, &seq), -EINVAL);
    assert_int_equal(rds_parse_id("-1", 2, &ms, &seq), -EINVAL);
    assert_int_equal(rds_parse_id("1-", 2, &ms, &seq), -EINVAL);
    assert_int_equal(rds_parse_id("", 0, &ms, &seq), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
        cmocka_unit_test(test_parse_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
