/* close() of /dev/iommu and VFIO fds when other references remain: after
 * dup, dup2, dup3, F_DUPFD_CLOEXEC and fork, closing one fd must leave the
 * open file (its context) working through the others; only the last close
 * ends it. Prints "ok ..." per check.
 *
 *   run_fds VFIO_NUMBER */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#include "util.h"

static uint32_t ioas_alloc(int fd, const char *what)
{
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    check_ok(what, ioctl(fd, IOMMU_IOAS_ALLOC, &al));
    return al.out_ioas_id;
}

static int open_iommu(void)
{
    int fd = open("/dev/iommu", O_RDWR);
    if (fd < 0)
        fail("open /dev/iommu", -errno, 0);
    return fd;
}

static void expect_id(uint32_t got, uint32_t want, const char *what)
{
    if (got != want)
        fail(what, got, want);
    printf("ok %s\n", what);
}

int main(int argc, char **argv)
{
    char vfio[64];
    snprintf(vfio, sizeof(vfio), "/dev/vfio/devices/vfio%s", argc > 1 ? argv[1] : "0");

    /* dup */
    int fd = open_iommu();
    ioas_alloc(fd, "alloc");
    int fd2 = dup(fd);
    close(fd);
    expect_id(ioas_alloc(fd2, "alloc via dup"), 2, "dup keeps the context");
    close(fd2);

    /* F_DUPFD_CLOEXEC, dup2, dup3 in a chain */
    fd = open_iommu();
    ioas_alloc(fd, "alloc");
    fd2 = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    if (fd2 < 100)
        fail("F_DUPFD_CLOEXEC", fd2, 100);
    close(fd);
    expect_id(ioas_alloc(fd2, "alloc via F_DUPFD_CLOEXEC"), 2, "F_DUPFD_CLOEXEC keeps the context");
    if (dup2(fd2, 50) != 50)
        fail("dup2", -errno, 50);
    close(fd2);
    expect_id(ioas_alloc(50, "alloc via dup2"), 3, "dup2 keeps the context");
    if (dup3(50, 60, O_CLOEXEC) != 60)
        fail("dup3", -errno, 60);
    close(50);
    expect_id(ioas_alloc(60, "alloc via dup3"), 4, "dup3 keeps the context");
    close(60);

    /* dup2 over the last fd of another context: that context ends */
    int a = open_iommu(), b = open_iommu();
    ioas_alloc(a, "alloc a");
    ioas_alloc(b, "alloc b");
    if (dup2(a, b) != b)
        fail("dup2 over b", -errno, b);
    expect_id(ioas_alloc(b, "alloc via b"), 2, "dup2 target now names the first context");
    close(a);
    close(b);

    /* a VFIO fd: bind through a dup after the original is closed */
    fd = open_iommu();
    int dev = open(vfio, O_RDWR);
    if (dev < 0)
        fail("open vfio", -errno, 0);
    int dev2 = dup(dev);
    close(dev);
    struct vfio_device_bind_iommufd bind = { sizeof(bind), 0, fd, 0, 0 };
    check_ok("BIND via dup", ioctl(dev2, VFIO_DEVICE_BIND_IOMMUFD, &bind));
    expect_id(bind.out_devid, 1, "VFIO dup binds");
    close(dev2);
    close(fd);

    /* fork: the parent closes first, the child goes on using the file */
    fd = open_iommu();
    ioas_alloc(fd, "alloc");
    int p[2];
    if (pipe(p))
        fail("pipe", -errno, 0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char c;
        close(p[1]);
        if (read(p[0], &c, 1) != 1)
            _exit(3);
        expect_id(ioas_alloc(fd, "child alloc"), 2, "child's fd works after the parent closed");
        close(fd);
        fflush(stdout);
        _exit(0);
    }
    close(p[0]);
    close(fd);
    if (write(p[1], "x", 1) != 1)
        fail("write pipe", -errno, 1);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        fail("child", status, 0);
    close(p[1]);

    /* fork: the child closes first, the parent goes on */
    fd = open_iommu();
    ioas_alloc(fd, "alloc");
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        close(fd);
        _exit(0);
    }
    waitpid(pid, &status, 0);
    expect_id(ioas_alloc(fd, "parent alloc"), 2, "parent's fd works after the child closed");
    close(fd);

    /* and nothing is left over: a fresh context starts at 1 */
    fd = open_iommu();
    expect_id(ioas_alloc(fd, "fresh"), 1, "fresh context");
    close(fd);
    printf("done\n");
    return 0;
}
