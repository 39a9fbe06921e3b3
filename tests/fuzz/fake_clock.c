/* The clock of servers/core/timer.h, reading fake_clock_ms (see fake_clock.h). */
#include "fake_clock.h"

#include "core/timer.h"

int64_t fake_clock_ms = 1000000;

int64_t time_now_ms(void)
{
    return fake_clock_ms;
}

int64_t time_update(void)
{
    return fake_clock_ms;
}

int64_t time_now_us(void)
{
    return fake_clock_ms * 1000;
}
