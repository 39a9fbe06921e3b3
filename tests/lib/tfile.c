#include "tlib.h"

#include <errno.h>
#include <stdio.h>

int tfile_write(const char *dir, const char *name, const char *text)
{
    char path[512], tmp[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -errno;
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) < 0)
        return -EIO;
    return 0;
}
