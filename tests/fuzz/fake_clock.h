/* fake_clock: the core's clock (servers/core/timer.h) replaced by a variable,
 * for fuzz targets that drive sessions: WAITs and timeouts pass when the
 * harness moves the clock, never by really waiting. Link fake_clock.c instead
 * of servers/core/timer.c. */
#ifndef FUZZ_FAKE_CLOCK_H
#define FUZZ_FAKE_CLOCK_H

#include <stdint.h>

/* What time_now_ms() and time_update() return (ms); the harness sets it. */
extern int64_t fake_clock_ms;

#endif
