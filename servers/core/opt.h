/* opt: the command line of every binary, parsed from one table.
 *
 * A program describes its flags as an array of opt_t (long name, short name,
 * kind, destination, range, help text) and calls opt_parse. The behaviour is
 * getopt_long's: --name=VALUE and --name VALUE, a unique prefix of a long
 * name, -c VALUE, -cVALUE and clustered flags (-qc 5), "--" ending the
 * options, and arguments that are not options collected wherever they stand.
 * --help (generated from the table) and --version are built in. Every
 * problem is one line naming the flag and what is wrong with it, and the
 * programs exit 2 on it (opt_parse_or_exit). */
#ifndef CORE_OPT_H
#define CORE_OPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum opt_kind {
    OPT_FLAG,     /* no value: sets the int at dst to 1 */
    OPT_INT,      /* a decimal integer in [min, max] */
    OPT_SIZE,     /* bytes: "64k", "1m", "2g" (x1024), or a bare number of `unit` bytes */
    OPT_DURATION, /* "250us", "500ms", "10s", "2m", "1h", a bare number is seconds */
    OPT_STRING,   /* the value itself (not copied: it points into argv) */
    OPT_STRINGS,  /* repeatable: appended to the array at dst, *count entries of cap */
    OPT_CALL,     /* fn parses and stores the value itself */
};

/* A value check (OPT_STRING, OPT_STRINGS: may be NULL) or a value's parser
 * (OPT_CALL: stores through dst). Returns 0, or -EINVAL, optionally with the
 * reason in err (it follows "bad value 'V' for --NAME: " in the message). */
typedef int (*opt_fn)(const char *val, void *dst, char *err, size_t errlen);

typedef struct opt {
    const char *name;  /* long name without "--", or NULL */
    char short_name;   /* 0 = none */
    int kind;          /* enum opt_kind */
    void *dst;         /* where the value goes */
    size_t size;       /* OPT_INT, OPT_SIZE, OPT_DURATION: sizeof *dst (1, 2, 4 or 8) */
    uint64_t min, max; /* the range, in bytes for sizes and microseconds for durations */
    uint64_t unit;     /* sizes: bytes per stored unit; durations: microseconds per unit */
    size_t cap;        /* OPT_STRINGS: entries dst holds */
    size_t *count;     /* OPT_STRINGS: entries so far */
    opt_fn fn;
    const char *arg;  /* the value's name in --help ("N", "FILE") */
    const char *help; /* --help's text; "\n" starts an indented line */
    const char *off;  /* non-NULL: the flag is refused with this reason, and not listed */
} opt_t;

/* Table entries. The destination's type follows from the kind: int for
 * flags, any unsigned or signed integer type for numbers (the range must fit
 * it), const char * for strings, const char *[cap] for repeatable ones. */
#define OPT_FLAG_E(l, s, d, h)                                                                     \
    {                                                                                              \
        .name = (l), .short_name = (s), .kind = OPT_FLAG, .dst = (d), .help = (h)                  \
    }
#define OPT_INT_E(l, s, d, lo, hi, a, h)                                                           \
    {                                                                                              \
        .name = (l), .short_name = (s), .kind = OPT_INT, .dst = (d), .size = sizeof *(d),          \
        .min = (lo), .max = (hi), .arg = (a), .help = (h)                                          \
    }
#define OPT_SIZE_E(l, s, d, u, lo, hi, a, h)                                                       \
    {                                                                                              \
        .name = (l), .short_name = (s), .kind = OPT_SIZE, .dst = (d), .size = sizeof *(d),         \
        .unit = (u), .min = (lo), .max = (hi), .arg = (a), .help = (h)                             \
    }
#define OPT_DURATION_E(l, s, d, u, lo, hi, a, h)                                                   \
    {                                                                                              \
        .name = (l), .short_name = (s), .kind = OPT_DURATION, .dst = (d), .size = sizeof *(d),     \
        .unit = (u), .min = (lo), .max = (hi), .arg = (a), .help = (h)                             \
    }
#define OPT_STRING_E(l, s, d, f, a, h)                                                             \
    {                                                                                              \
        .name = (l), .short_name = (s), .kind = OPT_STRING, .dst = (d), .fn = (f), .arg = (a),     \
        .help = (h)                                                                                \
    }
#define OPT_STRINGS_E(l, s, d, n, c, f, a, h)                                                      \
    {                                                                                              \
        .name = (l), .short_name = (s), .kind = OPT_STRINGS, .dst = (d), .count = (n), .cap = (c), \
        .fn = (f), .arg = (a), .help = (h)                                                         \
    }
#define OPT_CALL_E(l, s, d, f, a, h)                                                               \
    {                                                                                              \
        .name = (l), .short_name = (s), .kind = OPT_CALL, .dst = (d), .fn = (f), .arg = (a),       \
        .help = (h)                                                                                \
    }
/* Sizes and durations: no upper bound but the parser's. */
#define OPT_NO_MAX UINT64_MAX
#define OPT_END                                                                                    \
    {                                                                                              \
        .kind = -1                                                                                 \
    }

typedef struct opt_spec {
    const char *prog;  /* "loadgen", "server-epoll": --version's and the messages' name */
    const char *args;  /* after "usage: PROG [options]" in --help, e.g. " TARGET"; or NULL */
    const char *about; /* lines between the usage line and the flags, or NULL */
    const opt_t *opts; /* ended by OPT_END */
} opt_spec_t;

#define OPT_DONE 1 /* opt_parse handled --help or --version: the program exits 0 */

/* Parse argv[1..argc-1] by spec. The arguments that are not options go to
 * pos (at most maxpos of them; *npos is set to how many). Returns 0;
 * OPT_DONE after printing --help or --version on stdout; or -EINVAL with one
 * line (no newline, no program name) in err: an unknown, ambiguous or
 * refused flag, a missing or bad value, or one positional argument too many.
 * Values already stored stay stored. Keeps no state: it may be called again. */
int opt_parse(const opt_spec_t *spec, int argc, char *const *argv, const char **pos, int maxpos,
              int *npos, char *err, size_t errlen);

/* opt_parse for a program's main: on OPT_DONE exits 0, on an error prints
 * "PROG: ERROR" on stderr and exits 2. Returns the number of positionals. */
int opt_parse_or_exit(const opt_spec_t *spec, int argc, char *const *argv, const char **pos,
                      int maxpos);

/* Print spec's --help text on f. */
void opt_usage(const opt_spec_t *spec, FILE *f);

/* Parse a duration ("250us", "500ms", "10s", "1.5s", "2m", "1h"; a bare
 * number is seconds) into *us. Returns 0, or -EINVAL (nothing stored) for
 * anything else, a negative value or more than 1e15 us. */
int opt_parse_duration(const char *s, int64_t *us);

/* Parse a size ("4096", "64k", "1m", "2g": units of 1024; a bare number
 * counts units of `unit` bytes) into *bytes. Returns 0 or -EINVAL. */
int opt_parse_size(const char *s, uint64_t unit, uint64_t *bytes);

#endif
