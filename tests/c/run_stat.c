/* A program that checks that /dev/iommu and /dev/vfio/devices/vfioN are
 * character devices, by every stat call a program may use. Prints one line
 * per path and call: "PATH CALL chr|notchr MAJOR:MINOR".
 *
 *   run_stat PATH... */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* Programs built against glibc < 2.33 call these (compat symbols now). */
extern int old_xstat(int, const char *, struct stat *);
extern int old_fxstat(int, int, struct stat *);
__asm__(".symver old_xstat, __xstat@GLIBC_2.2.5");
__asm__(".symver old_fxstat, __fxstat@GLIBC_2.2.5");

static void show(const char *path, const char *call, int r, const struct stat *st)
{
    if (r != 0) {
        printf("%s %s error\n", path, call);
        return;
    }
    printf("%s %s %s %u:%u\n", path, call, S_ISCHR(st->st_mode) ? "chr" : "notchr",
           major(st->st_rdev), minor(st->st_rdev));
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *p = argv[i];
        struct stat st;
        struct statx sx;
        show(p, "stat", stat(p, &st), &st);
        show(p, "lstat", lstat(p, &st), &st);
        show(p, "fstatat", fstatat(AT_FDCWD, p, &st, 0), &st);
        show(p, "__xstat", old_xstat(1, p, &st), &st);
        int r = statx(AT_FDCWD, p, 0, STATX_BASIC_STATS, &sx);
        st.st_mode = sx.stx_mode;
        st.st_rdev = makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
        show(p, "statx", r, &st);
        int fd = open(p, O_RDWR);
        if (fd < 0) {
            printf("%s open error\n", p);
            continue;
        }
        show(p, "fstat", fstat(fd, &st), &st);
        show(p, "__fxstat", old_fxstat(1, fd, &st), &st);
        r = statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx);
        st.st_mode = sx.stx_mode;
        st.st_rdev = makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
        show(p, "fstatx", r, &st);
        close(fd);
    }
    return 0;
}
