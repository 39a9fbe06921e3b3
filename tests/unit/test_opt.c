/* The option parser of the core (servers/core/opt.c): getopt_long's syntax,
 * every kind of value with its range, the one-line errors, --help. One line
 * per case: a command line, what opt_parse returns, and what the error line
 * must contain or a value that must come out. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/opt.h"
#include "core/version.h"

/* Everything the test table stores into. */
typedef struct vals {
    int quiet, verbose;
    int port;
    unsigned count;
    uint64_t big;
    uint8_t small;
    size_t stack_kb;
    int64_t dur_us;
    int64_t timeout_ms;
    const char *name;
    const char *tags[3];
    size_t ntags;
    int mode;
    int never; /* a refused flag's destination: stays 0 */
    const char *pos[2];
    int npos;
} vals_t;

static int check_name(const char *val, void *dst, char *err, size_t errlen)
{
    (void)dst;
    if (strchr(val, ' ') == NULL)
        return 0;
    snprintf(err, errlen, "no spaces");
    return -EINVAL;
}

static int parse_mode(const char *val, void *dst, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    if (strcmp(val, "fast") && strcmp(val, "slow"))
        return -EINVAL; /* no reason given: the message is the bare "bad value" */
    *(int *)dst = val[0] == 'f' ? 1 : 2;
    return 0;
}

static vals_t v;

static const opt_t table[] = {
    OPT_FLAG_E("quiet", 'q', &v.quiet, "say less"),
    OPT_FLAG_E("verbose", 'v', &v.verbose, "say more"),
    OPT_INT_E("port", 'p', &v.port, 0, 65535, "N", "port"),
    OPT_INT_E("count", 'c', &v.count, 1, 1000, "N", "how many\nsecond line"),
    OPT_INT_E("big", 0, &v.big, 0, UINT64_MAX, "N", "anything"),
    OPT_INT_E("small", 0, &v.small, 0, 255, "N", "a byte"),
    OPT_SIZE_E("stack-kb", 0, &v.stack_kb, 1024, 16 << 10, 1 << 30, "N", "stack"),
    OPT_DURATION_E("duration", 'd', &v.dur_us, 1, 1, OPT_NO_MAX, "T", "how long"),
    OPT_DURATION_E("timeout", 0, &v.timeout_ms, 1000, 1000, 60000000, "T", "timeout"),
    OPT_STRING_E("name", 'n', &v.name, check_name, "S", "a name"),
    OPT_STRINGS_E("tag", 't', v.tags, &v.ntags, 3, NULL, "T", "repeatable"),
    OPT_CALL_E("mode", 0, &v.mode, parse_mode, "M", "fast or slow"),
    {.name = "never", .kind = OPT_FLAG, .dst = &v.never, .off = "is not for this program"},
    OPT_END,
};

static const opt_spec_t spec = {.prog = "prog", .args = " [FILE]", .opts = table};

/* Parse a space-separated line ('~' stands for a space) into v. */
static int parse(const char *line, char *err, size_t errlen)
{
    static char store[1024];
    char *argv[32];
    int argc = 0;
    memset(&v, 0, sizeof v);
    snprintf(store, sizeof store, "prog %s", line);
    for (char *t = strtok(store, " "); t && argc < 31; t = strtok(NULL, " ")) {
        for (char *p = t; *p; p++)
            if (*p == '~')
                *p = ' ';
        argv[argc++] = t;
    }
    argv[argc] = NULL;
    err[0] = '\0';
    return opt_parse(&spec, argc, argv, v.pos, 2, &v.npos, err, errlen);
}

/* A line that parses; then `field` must hold `want`. */
#define OK(line, field, want)                                                                      \
    do {                                                                                           \
        char e_[256];                                                                              \
        int rc_ = parse(line, e_, sizeof e_);                                                      \
        if (rc_ != 0)                                                                              \
            fail_msg("'%s': %d '%s'", line, rc_, e_);                                              \
        if (v.field != (want))                                                                     \
            fail_msg("'%s': " #field " is %lld, want %lld", line, (long long)v.field,              \
                     (long long)(want));                                                           \
    } while (0)

/* A line that fails with one line containing msg. */
#define BAD(line, msg)                                                                             \
    do {                                                                                           \
        char e_[256];                                                                              \
        int rc_ = parse(line, e_, sizeof e_);                                                      \
        if (rc_ != -EINVAL)                                                                        \
            fail_msg("'%s' accepted (%d)", line, rc_);                                             \
        if (!strstr(e_, msg))                                                                      \
            fail_msg("'%s': error '%s' lacks '%s'", line, e_, msg);                                \
        assert_null(strchr(e_, '\n'));                                                             \
    } while (0)

static void test_syntax(void **state)
{
    (void)state;
    OK("--port 80", port, 80);
    OK("--port=80", port, 80);
    OK("-p 80", port, 80);
    OK("-p80", port, 80);
    OK("--po 80", port, 80); /* a unique prefix */
    OK("-qv", verbose, 1);   /* clustered flags */
    OK("-qp 7", port, 7);    /* a flag, then one with a value */
    OK("-qp7", quiet, 1);
    OK("--port=7 -- -q", quiet, 0); /* after --, -q is an argument */
    OK("--timeout=2s", timeout_ms, 2000);
}

static void test_positionals(void **state)
{
    (void)state;
    OK("a", npos, 1);
    OK("a --port 1 b", npos, 2); /* options anywhere, as GNU getopt */
    OK("-- --port", npos, 1);    /* after --, nothing is an option */
    OK("- -q", npos, 1);         /* "-" alone is an argument */
    char err[256];
    assert_int_equal(parse("a --port 1 b", err, sizeof err), 0);
    assert_string_equal(v.pos[0], "a");
    assert_string_equal(v.pos[1], "b");
    assert_int_equal(v.port, 1);
    assert_int_equal(parse("-- --port", err, sizeof err), 0);
    assert_string_equal(v.pos[0], "--port");
    BAD("a b c", "unexpected argument 'c'");
}

static void test_values(void **state)
{
    (void)state;
    OK("--port 0", port, 0);
    OK("--port 65535", port, 65535);
    OK("--big 18446744073709551615", big, UINT64_MAX);
    OK("--small 255", small, 255);
    OK("--stack-kb 256", stack_kb, 256); /* a bare number counts the unit */
    OK("--stack-kb 64k", stack_kb, 64);
    OK("--stack-kb 2M", stack_kb, 2048);
    OK("--stack-kb 1g", stack_kb, 1 << 20);
    OK("-d 250us", dur_us, 250);
    OK("-d 1.5s", dur_us, 1500000);
    OK("-d 2", dur_us, 2000000); /* a bare number is seconds */
    OK("-d 2m", dur_us, 120000000);
    OK("--timeout 250ms", timeout_ms, 250);
    OK("--timeout 1m", timeout_ms, 60000);
    OK("--mode slow", mode, 2);
    OK("-t a -t b --tag=c", ntags, 3);
    char err[256];
    assert_int_equal(parse("-n x --name y -t a --tag b", err, sizeof err), 0);
    assert_string_equal(v.name, "y"); /* the last one wins */
    assert_string_equal(v.tags[1], "b");
}

static void test_errors(void **state)
{
    (void)state;
    BAD("--bogus", "unknown option '--bogus'");
    BAD("-x", "unknown option '-x'");
    BAD("-qx", "unknown option '-x'");
    BAD("--s 1", "ambiguous option '--s'"); /* small, stack-kb */
    BAD("--port", "option '--port' needs a value");
    BAD("-p", "option '-p' needs a value");
    BAD("--quiet=1", "option '--quiet' takes no value");
    BAD("--port x", "bad value 'x' for --port: expected an integer from 0 to 65535");
    BAD("-p x", "bad value 'x' for -p:");
    BAD("--port 65536", "for --port");
    BAD("--port -1", "for --port");
    BAD("--port=", "bad value '' for --port");
    BAD("--port 1x", "for --port");
    BAD("--count 0", "from 1 to 1000");
    BAD("--big 18446744073709551616", "for --big");
    BAD("--stack-kb 15", "expected a size from 16k to 1g");
    BAD("--stack-kb 2g", "for --stack-kb");
    BAD("--stack-kb k", "for --stack-kb");
    BAD("-d 0", "expected a duration of at least 1us");
    BAD("-d 10y", "for -d");
    BAD("-d -1s", "for -d");
    BAD("--timeout 999us", "expected a duration from 1ms to 1m");
    BAD("--name a~b", "bad value 'a b' for --name: no spaces");
    BAD("--mode medium", "bad value 'medium' for --mode");
    BAD("-t a -t b -t c -t d", "for -t: at most 3");
    BAD("--never", "--never is not for this program");
}

static void test_help_version(void **state)
{
    (void)state;
    char err[256], buf[4096];
    /* --help and --version print on stdout: catch it in a pipe. */
    int fds[2], saved = dup(1);
    assert_int_equal(pipe(fds), 0);
    fflush(stdout);
    dup2(fds[1], 1);
    int rc_help = parse("--port 1 --help", err, sizeof err);
    int rc_version = parse("--version", err, sizeof err);
    fflush(stdout);
    dup2(saved, 1);
    close(fds[1]);
    close(saved);
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    assert_int_equal(rc_help, OPT_DONE);
    assert_int_equal(rc_version, OPT_DONE);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "usage: prog [options] [FILE]\n"));
    assert_non_null(strstr(buf, "  -p, --port N"));
    assert_non_null(strstr(buf, "      --big N"));
    assert_non_null(strstr(buf, "how many\n                    second line\n"));
    assert_null(strstr(buf, "never")); /* a refused flag is not listed */
    assert_non_null(strstr(buf, "--help, --version\n"));
    assert_non_null(strstr(buf, "prog " LAB_VERSION "\n"));
}

static void test_helpers(void **state)
{
    (void)state;
    uint64_t b;
    int64_t us;
    assert_int_equal(opt_parse_size("3", 1, &b), 0);
    assert_int_equal(b, 3);
    assert_int_equal(opt_parse_size("3k", 1, &b), 0);
    assert_int_equal(b, 3072);
    assert_int_equal(opt_parse_size("", 1, &b), -EINVAL);
    assert_int_equal(opt_parse_size("99999999999g", 1, &b), -EINVAL); /* overflows */
    assert_int_equal(opt_parse_duration("1h", &us), 0);
    assert_int_equal(us, 3600000000LL);
    assert_int_equal(opt_parse_duration("inf", &us), -EINVAL);
    assert_int_equal(opt_parse_duration(" 1", &us), -EINVAL);
    assert_int_equal(opt_parse_duration("1e99h", &us), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syntax),       cmocka_unit_test(test_positionals),
        cmocka_unit_test(test_values),       cmocka_unit_test(test_errors),
        cmocka_unit_test(test_help_version), cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
