/* tguard: buffers that end right before an unreadable page. */
#include "tlib.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Pages holding n bytes (at least one, so even an empty copy has an address
 * that is valid and ends at the guard). */
static size_t data_pages(size_t n, size_t page)
{
    return n ? (n + page - 1) / page : 1;
}

void *tguard_copy(const void *p, size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), dp = data_pages(n, page);
    char *base =
        mmap(NULL, (dp + 1) * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base + dp * page, page, PROT_NONE) < 0) {
        perror("tguard_copy");
        abort();
    }
    char *copy = base + dp * page - n;
    if (n)
        memcpy(copy, p, n);
    return copy;
}

void tguard_free(void *copy, size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), dp = data_pages(n, page);
    char *base = (char *)copy + n - dp * page;
    munmap(base, (dp + 1) * page);
}
