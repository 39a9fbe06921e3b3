/* merge: `loadgen merge OUT IN1 [IN2 ...]`, the results of several agents
 * combined exactly: their histograms added bucket by bucket (percentiles are
 * read from the sum, never averaged), counts, errors and rates summed, the
 * window the union of theirs. JSON results (--json) give a JSON result,
 * interval logs (--hlog) an interval log. */
#ifndef LOADGEN_MERGE_H
#define LOADGEN_MERGE_H

/* The subcommand's main: argv[0] is "merge". Returns the exit status: 0; 2
 * for bad input (a missing, unreadable or corrupt file, histograms of other
 * parameters, JSON and logs mixed), the reason on one line of stderr; 1 when
 * OUT cannot be written. */
int merge_main(int argc, char **argv);

#endif
