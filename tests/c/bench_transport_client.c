/* The C client of scripts/bench_transport.py: µs per call of one mode.
 *
 *   bench_transport_client MODE PATH N ROUNDS
 *
 * MODE: ioctl (IOMMUFS_NULL), frame (IOMMUFS_NULL as a frame), map
 * (IOMMU_IOAS_MAP of 4 KiB at a fixed IOVA; an untimed unmap-all after each
 * round). Prints one µs-per-call figure per round, after an untimed
 * warm-up of null ioctls. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
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

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODE PATH N ROUNDS\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    long n = atol(argv[3]);
    int rounds = atoi(argv[4]);
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) die("open");
    struct iommufs_frame_request req = { "IOFS", IOMMUFS_NULL, 0, 0 };
    unsigned char rep[64];
    uint32_t ioas = 0;
    void *page = NULL;
    if (strcmp(mode, "map") == 0) {
        struct iommu_ioas_alloc a = { sizeof(a), 0, 0 };
        if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) die("IOAS_ALLOC");
        ioas = a.out_ioas_id;
        page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(page, 1, 4096);
    }
    for (long i = 0; i < n / 10; i++)                   /* warm up */
        if (ioctl(fd, IOMMUFS_NULL, 0)) die("ioctl");
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        if (strcmp(mode, "ioctl") == 0) {
            for (long i = 0; i < n; i++)
                if (ioctl(fd, IOMMUFS_NULL, 0)) die("ioctl");
        } else if (strcmp(mode, "frame") == 0) {
            for (long i = 0; i < n; i++) {
                if (write(fd, &req, sizeof(req)) != sizeof(req)) die("write");
                if (read(fd, rep, sizeof(rep)) != sizeof(struct iommufs_frame_reply)) die("read");
            }
        } else {
            for (long i = 0; i < n; i++) {
                struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_FIXED_IOVA
                                            | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
                                            ioas, 0, (uint64_t)(uintptr_t)page, 4096,
                                            (1ULL << 32) + (uint64_t)i * 4096 };
                if (ioctl(fd, IOMMU_IOAS_MAP, &m)) die("IOAS_MAP");
            }
        }
        double t = now() - t0;
        printf("%.3f\n", t / n * 1e6);
        fflush(stdout);
        if (strcmp(mode, "map") == 0) {                 /* untimed: unmap all */
            struct iommu_ioas_unmap u = { sizeof(u), ioas, 0, ~0ULL };
            if (ioctl(fd, IOMMU_IOAS_UNMAP, &u)) die("IOAS_UNMAP");
        }
    }
    return 0;
}
