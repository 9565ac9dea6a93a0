/* The C client of scripts/bench_fault.py: I/O page fault figures.
 *
 *   bench_fault_client MOUNT VFIO_NODE DEVICE MODE N
 *
 * MODE ioctl: N null ioctls (IOMMUFS_NULL) and N IOMMU_OPTION GETs on the
 *   iommufd; prints "null <us>" and "option <us>" (mean per call).
 * MODE epoll | poll | select: a fault handler (this process) and a PRI
 *   device (a forked child writing IODM frames) take N faults in turn: the
 *   child stamps t0 and writes a 4-byte DMA to an unmapped page; the handler
 *   wakes in MODE, stamps t1 once it holds the record, maps the page and
 *   answers SUCCESS; the child's read of the DMA reply returns at t2.
 *   Prints "wake <median us> <p90 us>" (t1 - t0) and "roundtrip <median us>
 *   <p90 us>" (t2 - t0).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uapi.h"

#define BASE 0x40000000ull

/* A 4-byte DMA write frame: the header and its data, no tail padding. */
struct dma4 {
    struct iommufs_dma_request h;
    char data[4];
} __attribute__((packed));

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *w) { fprintf(stderr, "bench_fault: %s: %s\n", w, strerror(errno)); exit(1); }

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *v, long n)
{
    qsort(v, n, sizeof *v, cmp);
    printf("%s %.2f %.2f\n", what, v[n / 2] * 1e6, v[n * 9 / 10] * 1e6);
}

static int open_at(const char *mnt, const char *rel)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", mnt, rel);
    int fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0) die(p);
    return fd;
}

static void wait_readable(const char *mode, int ep, int ffd)
{
    if (strcmp(mode, "epoll") == 0) {
        struct epoll_event ev;
        if (epoll_wait(ep, &ev, 1, 10000) != 1) die("epoll_wait");
    } else if (strcmp(mode, "poll") == 0) {
        struct pollfd p = { ffd, POLLIN, 0 };
        if (poll(&p, 1, 10000) != 1) die("poll");
    } else {
        fd_set r;
        FD_ZERO(&r);
        FD_SET(ffd, &r);
        struct timeval tv = { 10, 0 };
        if (select(ffd + 1, &r, NULL, NULL, &tv) != 1) die("select");
    }
}

int main(int argc, char **argv)
{
    const char *mnt = argv[1], *mode = argv[4];
    long n = atol(argv[5]);
    char rel[600];
    int fd = open_at(mnt, "iommu");

    if (strcmp(mode, "ioctl") == 0) {
        struct iommu_ioas_alloc a = { .size = sizeof a };
        if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) die("IOAS_ALLOC");
        struct iommu_option o = { .size = sizeof o, .option_id = IOMMU_OPTION_HUGE_PAGES,
                                  .op = IOMMU_OPTION_OP_GET, .object_id = a.out_ioas_id };
        for (long i = 0; i < n / 10; i++)
            ioctl(fd, IOMMUFS_NULL, 0);
        double t0 = now();
        for (long i = 0; i < n; i++)
            if (ioctl(fd, IOMMUFS_NULL, 0)) die("NULL");
        double t1 = now();
        for (long i = 0; i < n; i++)
            if (ioctl(fd, IOMMU_OPTION, &o)) die("OPTION");
        double t2 = now();
        printf("null %.2f\noption %.2f\n", (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6);
        return 0;
    }

    snprintf(rel, sizeof rel, "vfio/devices/%s", argv[2]);
    int dev = open_at(mnt, rel);
    struct vfio_device_bind_iommufd b = { .argsz = sizeof b, .iommufd = fd };
    if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b)) die("bind");
    struct iommu_fault_alloc fa = { .size = sizeof fa };
    if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa)) die("FAULT_QUEUE_ALLOC");
    struct iommufs_fd_path fp = { .size = sizeof fp };
    if (ioctl(fd, IOMMUFS_FD_PATH, &fp)) die("FD_PATH");
    int ffd = open_at(mnt, fp.path);
    fcntl(ffd, F_SETFL, O_NONBLOCK);
    struct iommu_ioas_alloc a = { .size = sizeof a };
    if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) die("IOAS_ALLOC");
    struct iommu_hwpt_alloc h = { .size = sizeof h, .flags = IOMMU_HWPT_ALLOC_FAULT_ID_VALID,
                                  .dev_id = b.out_devid, .pt_id = a.out_ioas_id,
                                  .fault_id = fa.out_fault_id };
    if (ioctl(fd, IOMMU_HWPT_ALLOC, &h)) die("HWPT_ALLOC");
    struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof at, .pt_id = h.out_hwpt_id };
    if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)) die("attach");
    char *buf = mmap(NULL, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    double *t = mmap(NULL, 2 * n * sizeof(double), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);      /* t0 and t2 from the child */
    double *wake = calloc(n, sizeof(double)), *rt = calloc(n, sizeof(double));
    memset(buf, 0, n * 4096);
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN };
    ev.data.fd = ffd;
    epoll_ctl(ep, EPOLL_CTL_ADD, ffd, &ev);

    snprintf(rel, sizeof rel, "devices/%s/dma", argv[3]);
    pid_t child = fork();
    if (child == 0) {
        int dma = open_at(mnt, rel);
        for (long i = 0; i < n; i++) {
            struct dma4 rq = { { "IODM", IOMMUFS_DMA_OP_WRITE, 0, 0, BASE + i * 4096, 4, 0 }, "dma!" };
            struct iommufs_dma_reply rp;
            t[i] = now();
            if (write(dma, &rq, sizeof rq) != sizeof rq) die("dma write");
            ssize_t got = read(dma, &rp, sizeof rp);
            if (got != sizeof rp || rp.status) {
                fprintf(stderr, "bench_fault: DMA %ld: read %zd, status %d\n", i, got, got > 0 ? rp.status : 0);
                _exit(1);
            }
            t[n + i] = now();
        }
        _exit(0);
    }
    for (long got = 0; got < n;) {
        wait_readable(mode, ep, ffd);
        struct iommu_hwpt_pgfault rec[8];
        ssize_t k = read(ffd, rec, sizeof rec);
        double t1 = now();
        if (k < 0 && errno == EAGAIN)
            continue;
        if (k <= 0) die("read");
        for (ssize_t j = 0; j < k / 40; j++) {
            long i = (rec[j].addr - BASE) / 4096;
            wake[i] = t1 - t[i];
            struct iommu_ioas_map m = { .size = sizeof m, .ioas_id = a.out_ioas_id,
                                        .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                                                 | IOMMU_IOAS_MAP_WRITEABLE,
                                        .user_va = (uintptr_t)buf + i * 4096, .length = 4096,
                                        .iova = rec[j].addr };
            if (ioctl(fd, IOMMU_IOAS_MAP, &m)) die("map");
            struct iommu_hwpt_page_response r = { rec[j].cookie, IOMMU_PAGE_RESP_SUCCESS };
            if (write(ffd, &r, sizeof r) != sizeof r) die("response");
            got++;
        }
    }
    int st;
    waitpid(child, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
        fprintf(stderr, "bench_fault: the device process failed\n");
        return 1;
    }
    for (long i = 0; i < n; i++) {
        rt[i] = t[n + i] - t[i];
        if (memcmp(buf + i * 4096, "dma!", 4)) {
            fprintf(stderr, "bench_fault: DMA %ld did not land\n", i);
            return 1;
        }
    }
    report("wake", wake, n);
    report("roundtrip", rt, n);
    return 0;
}
