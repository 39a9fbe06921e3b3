#include "opt.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "version.h"

/* What a parse is doing: the spec, and where the error line goes. */
typedef struct parse {
    const opt_spec_t *spec;
    char *err;
    size_t errlen;
} parse_t;

static int is_end(const opt_t *o)
{
    return o->kind < 0;
}

static int takes_value(const opt_t *o)
{
    return o->kind != OPT_FLAG;
}

/* The flag's name as a message shows it: "--name", or "-c" when it was
 * given in its short form. */
static void flag_name(const opt_t *o, int as_short, char *buf, size_t len)
{
    if (as_short || !o->name)
        snprintf(buf, len, "-%c", o->short_name);
    else
        snprintf(buf, len, "--%s", o->name);
}

int opt_parse_duration(const char *s, int64_t *us)
{
    static const struct {
        const char *suffix;
        double us;
    } units[] = {{"", 1e6}, {"s", 1e6}, {"ms", 1e3}, {"us", 1}, {"m", 60e6}, {"h", 3600e6}};
    char *end;
    /* strtod alone would take "-1", " 1", "inf" and "0x10". */
    if (!s || !(isdigit((unsigned char)*s) || *s == '.'))
        return -EINVAL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s)
        return -EINVAL;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        if (strcmp(end, units[i].suffix) != 0)
            continue;
        v *= units[i].us;
        if (v < 0 || v > 1e15)
            return -EINVAL;
        *us = (int64_t)(v + 0.5);
        return 0;
    }
    return -EINVAL;
}

int opt_parse_size(const char *s, uint64_t unit, uint64_t *bytes)
{
    size_t len = s ? strlen(s) : 0;
    uint64_t mult = unit, v;
    if (len > 1) {
        switch (tolower((unsigned char)s[len - 1])) {
        case 'k':
            mult = 1ULL << 10, len--;
            break;
        case 'm':
            mult = 1ULL << 20, len--;
            break;
        case 'g':
            mult = 1ULL << 30, len--;
            break;
        }
    }
    if (mult == 0 || proto_parse_u64(s, len, UINT64_MAX / mult, &v) < 0)
        return -EINVAL;
    *bytes = v * mult;
    return 0;
}

/* A number of microseconds as the largest unit that divides it: "2m". */
static void fmt_duration(uint64_t us, char *buf, size_t len)
{
    static const struct {
        const char *suffix;
        uint64_t us;
    } units[] = {{"h", 3600000000ULL}, {"m", 60000000}, {"s", 1000000}, {"ms", 1000}, {"us", 1}};
    size_t i = 0;
    while (us && us % units[i].us)
        i++;
    snprintf(buf, len, "%llu%s", (unsigned long long)(us / units[i].us), us ? units[i].suffix : "");
}

/* A number of bytes as the largest unit of 1024 that divides it: "64k". */
static void fmt_size(uint64_t b, char *buf, size_t len)
{
    const char *suffix = "kmg";
    int i = -1;
    while (i < 2 && b && b % 1024 == 0)
        b /= 1024, i++;
    if (i >= 0)
        snprintf(buf, len, "%llu%c", (unsigned long long)b, suffix[i]);
    else
        snprintf(buf, len, "%llu", (unsigned long long)b);
}

/* What a value of o must look like, for the error line. */
static void expected(const opt_t *o, char *buf, size_t len)
{
    char lo[32], hi[32];
    switch (o->kind) {
    case OPT_INT:
        snprintf(buf, len, "expected an integer from %llu to %llu", (unsigned long long)o->min,
                 (unsigned long long)o->max);
        break;
    case OPT_SIZE:
        fmt_size(o->min, lo, sizeof lo);
        fmt_size(o->max, hi, sizeof hi);
        if (o->max == OPT_NO_MAX)
            snprintf(buf, len, "expected a size of at least %s (k, m, g: x1024)", lo);
        else
            snprintf(buf, len, "expected a size from %s to %s (k, m, g: x1024)", lo, hi);
        break;
    case OPT_DURATION:
        fmt_duration(o->min, lo, sizeof lo);
        fmt_duration(o->max, hi, sizeof hi);
        if (o->max == OPT_NO_MAX)
            snprintf(buf, len, "expected a duration of at least %s (us, ms, s, m, h)", lo);
        else
            snprintf(buf, len, "expected a duration from %s to %s (us, ms, s, m, h)", lo, hi);
        break;
    default:
        buf[0] = '\0';
    }
}

/* Store v into an integer of o->size bytes. The range was checked against
 * o->max, which the table keeps within the destination's type. */
static void store_int(const opt_t *o, uint64_t v)
{
    switch (o->size) {
    case 1: {
        uint8_t x = (uint8_t)v;
        memcpy(o->dst, &x, 1);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)v;
        memcpy(o->dst, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)v;
        memcpy(o->dst, &x, 4);
        break;
    }
    default:
        memcpy(o->dst, &v, 8);
    }
}

/* Parse a number of o's kind, in base units (bytes, microseconds). */
static int parse_number(const opt_t *o, const char *val, uint64_t *v)
{
    int64_t us;
    switch (o->kind) {
    case OPT_INT:
        return proto_parse_u64(val, strlen(val), UINT64_MAX, v) < 0 ? -EINVAL : 0;
    case OPT_SIZE:
        return opt_parse_size(val, o->unit, v);
    default:
        if (opt_parse_duration(val, &us) < 0)
            return -EINVAL;
        *v = (uint64_t)us;
        return 0;
    }
}

/* Check val and store it as o says. Returns 0, or -EINVAL with the reason
 * (possibly empty) in why. */
static int store(const opt_t *o, const char *val, char *why, size_t whylen)
{
    uint64_t v;
    switch (o->kind) {
    case OPT_FLAG:
        *(int *)o->dst = 1;
        return 0;
    case OPT_INT:
    case OPT_SIZE:
    case OPT_DURATION:
        if (parse_number(o, val, &v) < 0 || v < o->min || v > o->max) {
            expected(o, why, whylen);
            return -EINVAL;
        }
        store_int(o, o->kind == OPT_INT || o->unit <= 1 ? v : v / o->unit);
        return 0;
    case OPT_STRING:
        if (o->fn && o->fn(val, o->dst, why, whylen) < 0)
            return -EINVAL;
        *(const char **)o->dst = val;
        return 0;
    case OPT_STRINGS:
        if (*o->count >= o->cap) {
            snprintf(why, whylen, "at most %zu of them", o->cap);
            return -EINVAL;
        }
        if (o->fn && o->fn(val, o->dst, why, whylen) < 0)
            return -EINVAL;
        ((const char **)o->dst)[(*o->count)++] = val;
        return 0;
    default:
        return o->fn(val, o->dst, why, whylen);
    }
}

/* Apply o with its value (NULL for a flag): the error line on failure. */
static int apply(parse_t *p, const opt_t *o, int as_short, const char *val)
{
    char name[64], why[192];
    flag_name(o, as_short, name, sizeof name);
    if (o->off) {
        snprintf(p->err, p->errlen, "%s %s", name, o->off);
        return -EINVAL;
    }
    why[0] = '\0';
    if (store(o, val, why, sizeof why) == 0)
        return 0;
    snprintf(p->err, p->errlen, "bad value '%s' for %s%s%s", val ? val : "", name,
             why[0] ? ": " : "", why);
    return -EINVAL;
}

/* The entry for a long name of len characters: exact, else a unique
 * prefix (as getopt_long). NULL with the error line when none or several. */
static const opt_t *find_long(parse_t *p, const char *arg, size_t len)
{
    const opt_t *hit = NULL;
    int hits = 0;
    for (const opt_t *o = p->spec->opts; !is_end(o); o++) {
        if (!o->name || strncmp(o->name, arg, len) != 0)
            continue;
        if (o->name[len] == '\0')
            return o;
        hit = o, hits++;
    }
    if (hits == 1)
        return hit;
    snprintf(p->err, p->errlen, "%s option '--%.*s' (try --help)", hits ? "ambiguous" : "unknown",
             (int)len, arg);
    return NULL;
}

static const opt_t *find_short(const opt_spec_t *spec, char c)
{
    for (const opt_t *o = spec->opts; !is_end(o); o++)
        if (o->short_name == c)
            return o;
    return NULL;
}

/* The built-in --help and --version (whole names only: "--he" is a prefix
 * of the table's names, never of these). Returns OPT_DONE or 0. */
static int builtin(parse_t *p, const char *arg, size_t len)
{
    if (len == 4 && strncmp(arg, "help", 4) == 0) {
        opt_usage(p->spec, stdout);
        return OPT_DONE;
    }
    if (len == 7 && strncmp(arg, "version", 7) == 0) {
        printf("%s %s\n", p->spec->prog, LAB_VERSION);
        return OPT_DONE;
    }
    return 0;
}

/* argv[*i] is "--name" or "--name=value". Returns 0, OPT_DONE or -EINVAL;
 * *i moves past a value taken from the next argument. */
static int parse_long(parse_t *p, int argc, char *const *argv, int *i)
{
    const char *arg = argv[*i] + 2, *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    int rc = builtin(p, arg, len);
    if (rc)
        return rc;
    const opt_t *o = find_long(p, arg, len);
    if (!o)
        return -EINVAL;
    const char *val = eq ? eq + 1 : NULL;
    if (!takes_value(o) && val) {
        snprintf(p->err, p->errlen, "option '--%s' takes no value", o->name);
        return -EINVAL;
    }
    if (takes_value(o) && !val) {
        if (*i + 1 >= argc) {
            snprintf(p->err, p->errlen, "option '--%s' needs a value", o->name);
            return -EINVAL;
        }
        val = argv[++*i];
    }
    return apply(p, o, 0, val);
}

/* argv[*i] is "-abc": flags, and the last may take a value, attached
 * ("-c5") or next. Returns 0 or -EINVAL; *i as in parse_long. */
static int parse_short(parse_t *p, int argc, char *const *argv, int *i)
{
    for (const char *c = argv[*i] + 1; *c; c++) {
        const opt_t *o = find_short(p->spec, *c);
        if (!o) {
            snprintf(p->err, p->errlen, "unknown option '-%c' (try --help)", *c);
            return -EINVAL;
        }
        if (!takes_value(o)) {
            if (apply(p, o, 1, NULL) < 0)
                return -EINVAL;
            continue;
        }
        const char *val = c[1] ? c + 1 : NULL;
        if (!val && *i + 1 >= argc) {
            snprintf(p->err, p->errlen, "option '-%c' needs a value", *c);
            return -EINVAL;
        }
        return apply(p, o, 1, val ? val : argv[++*i]);
    }
    return 0;
}

int opt_parse(const opt_spec_t *spec, int argc, char *const *argv, const char **pos, int maxpos,
              int *npos, char *err, size_t errlen)
{
    parse_t p = {.spec = spec, .err = err, .errlen = errlen};
    int n = 0, options = 1, rc = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (options && strcmp(a, "--") == 0) {
            options = 0;
        } else if (options && a[0] == '-' && a[1] == '-') {
            rc = parse_long(&p, argc, argv, &i);
        } else if (options && a[0] == '-' && a[1]) {
            rc = parse_short(&p, argc, argv, &i);
        } else if (n < maxpos) {
            pos[n++] = a;
        } else {
            snprintf(err, errlen, "unexpected argument '%s' (try --help)", a);
            rc = -EINVAL;
        }
    }
    *npos = n;
    return rc;
}

int opt_parse_or_exit(const opt_spec_t *spec, int argc, char *const *argv, const char **pos,
                      int maxpos)
{
    char err[512];
    int n, rc = opt_parse(spec, argc, argv, pos, maxpos, &n, err, sizeof err);
    if (rc == OPT_DONE)
        exit(0);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", spec->prog, err);
        exit(2);
    }
    return n;
}

/* The left column of o's --help line: "  -c, --connections N". */
static void usage_left(const opt_t *o, int shorts, char *buf, size_t len)
{
    const char *arg = takes_value(o) && o->arg ? o->arg : "";
    const char *sp = *arg ? " " : "";
    if (o->short_name && o->name)
        snprintf(buf, len, "  -%c, --%s%s%s", o->short_name, o->name, sp, arg);
    else if (o->short_name)
        snprintf(buf, len, "  -%c%s%s", o->short_name, sp, arg);
    else
        snprintf(buf, len, "  %s--%s%s%s", shorts ? "    " : "", o->name, sp, arg);
}

/* Help text after the left column; its "\n"s continue at column col. */
static void usage_help(FILE *f, const char *help, int col)
{
    for (const char *h = help; *h; h++) {
        fputc(*h, f);
        if (*h == '\n')
            fprintf(f, "%*s", col, "");
    }
    fputc('\n', f);
}

void opt_usage(const opt_spec_t *spec, FILE *f)
{
    char left[128];
    int shorts = 0, col = 0;
    for (const opt_t *o = spec->opts; !is_end(o); o++)
        shorts |= o->short_name != 0;
    /* The help column: after the widest left part, within reason. */
    for (const opt_t *o = spec->opts; !is_end(o); o++) {
        usage_left(o, shorts, left, sizeof left);
        if (!o->off && (int)strlen(left) + 2 > col && strlen(left) < 26)
            col = (int)strlen(left) + 2;
    }
    fprintf(f, "usage: %s [options]%s\n", spec->prog, spec->args ? spec->args : "");
    if (spec->about)
        fputs(spec->about, f);
    for (const opt_t *o = spec->opts; !is_end(o); o++) {
        if (o->off)
            continue;
        usage_left(o, shorts, left, sizeof left);
        if ((int)strlen(left) + 1 > col)
            fprintf(f, "%s\n%*s", left, col, "");
        else
            fprintf(f, "%-*s", col, left);
        usage_help(f, o->help ? o->help : "", col);
    }
    fprintf(f, "  %s--help, --version\n", shorts ? "    " : "");
}
