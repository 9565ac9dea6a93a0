/* The C client of scripts/bench_run.py: µs per call of one mode.
 *
 *   bench_run_client MODE PATH N ROUNDS
 *
 * MODE: ioctl-null, ioctl-option (IOMMU_OPTION GET RLIMIT_MODE), frame-null,
 * frame-option (the same as frames), cycle (open PATH, IOAS_ALLOC, close).
 * Prints one µs-per-call figure per round, after an untimed warm-up. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "uapi.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) { perror(what); exit(1); }

/* One call of MODE on fd (or, for "cycle", on a fresh open of path). */
static void call(const char *mode, int fd, const char *path)
{
    struct iommu_option o = { sizeof(o), IOMMU_OPTION_RLIMIT_MODE, IOMMU_OPTION_OP_GET, 0, 0, 0 };
    if (!strcmp(mode, "ioctl-null")) {
        if (ioctl(fd, IOMMUFS_NULL, 0)) die("ioctl");
    } else if (!strcmp(mode, "ioctl-option")) {
        if (ioctl(fd, IOMMU_OPTION, &o)) die("IOMMU_OPTION");
    } else if (!strcmp(mode, "frame-null") || !strcmp(mode, "frame-option")) {
        unsigned char req[sizeof(struct iommufs_frame_request) + sizeof(o)], rep[64];
        struct iommufs_frame_request hdr = { "IOFS", IOMMUFS_NULL, 0, 0 };
        if (!strcmp(mode, "frame-option")) {
            hdr.cmd = IOMMU_OPTION;
            hdr.arg_len = sizeof(o);
        }
        memcpy(req, &hdr, sizeof(hdr));
        memcpy(req + sizeof(hdr), &o, sizeof(o));
        size_t n = sizeof(hdr) + hdr.arg_len;
        if (write(fd, req, n) != (ssize_t)n) die("write");
        if (read(fd, rep, sizeof(rep)) != (ssize_t)n) die("read");
    } else {                                                  /* cycle */
        int f = open(path, O_RDWR);
        if (f < 0) die("open");
        struct iommu_ioas_alloc a = { sizeof(a), 0, 0 };
        if (ioctl(f, IOMMU_IOAS_ALLOC, &a)) die("IOAS_ALLOC");
        close(f);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODE PATH N ROUNDS\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1], *path = argv[2];
    long n = atol(argv[3]);
    int rounds = atoi(argv[4]);
    int fd = open(path, O_RDWR);
    if (fd < 0) die("open");
    for (long i = 0; i < n / 10; i++)                       /* warm up */
        call(mode, fd, path);
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        for (long i = 0; i < n; i++)
            call(mode, fd, path);
        printf("%.3f\n", (now() - t0) / n * 1e6);
        fflush(stdout);
    }
    return 0;
}
