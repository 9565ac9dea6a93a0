/* The I/O page fault benchmark client (scripts/bench_fault.py runs it).
 *
 *   bench_fault MOUNT VFIO_NODE DEVICE MODE N
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
 *
 * Layouts from reference §5, §10.1, §11.2 and the README (DMA frames,
 * IOMMUFS_FD_PATH). */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
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

#define IO(nr) (0x3b00u | (nr))
#define IOMMUFS_NULL 0xF500u
#define IOMMUFS_FD_PATH 0xF503u
#define BASE 0x40000000ull

struct fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct fd_path { uint32_t size, index; char path[256]; };
struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct option { uint32_t size, option_id; uint16_t op, rsvd; uint32_t object_id; uint64_t val64; };
struct hwpt_alloc { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, rsvd, data_type, data_len;
                    uint64_t data_uptr; uint32_t fault_id, rsvd2; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; uint64_t token; };
struct attach { uint32_t argsz, flags, pt_id, pasid; };
struct pgfault { uint32_t flags, dev_id, pasid, grpid, perm, rsvd; uint64_t addr; uint32_t length, cookie; };
struct response { uint32_t cookie, code; };
struct dma_req { char magic[4]; uint32_t op, flags, pasid; uint64_t iova; uint32_t len, rsvd; char data[4]; };
struct dma_rep { char magic[4]; int32_t status; uint32_t moved, rsvd; uint64_t fault; };

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
        struct ioas_alloc a = { sizeof a, 0, 0 };
        if (ioctl(fd, IO(0x81), &a)) die("IOAS_ALLOC");
        struct option o = { sizeof o, 1 /* HUGE_PAGES */, 1 /* GET */, 0, a.out_ioas_id, 0 };
        for (long i = 0; i < n / 10; i++)
            ioctl(fd, IOMMUFS_NULL, 0);
        double t0 = now();
        for (long i = 0; i < n; i++)
            if (ioctl(fd, IOMMUFS_NULL, 0)) die("NULL");
        double t1 = now();
        for (long i = 0; i < n; i++)
            if (ioctl(fd, IO(0x87), &o)) die("OPTION");
        double t2 = now();
        printf("null %.2f\noption %.2f\n", (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6);
        return 0;
    }

    snprintf(rel, sizeof rel, "vfio/devices/%s", argv[2]);
    int dev = open_at(mnt, rel);
    struct bind b = { sizeof b, 0, fd, 0, 0 };
    if (ioctl(dev, IO(118), &b)) die("bind");
    struct fault_alloc fa = { sizeof fa, 0, 0, 0 };
    if (ioctl(fd, IO(0x8e), &fa)) die("FAULT_QUEUE_ALLOC");
    struct fd_path fp = { sizeof fp, 0 };
    if (ioctl(fd, IOMMUFS_FD_PATH, &fp)) die("FD_PATH");
    int ffd = open_at(mnt, fp.path);
    fcntl(ffd, F_SETFL, O_NONBLOCK);
    struct ioas_alloc a = { sizeof a, 0, 0 };
    if (ioctl(fd, IO(0x81), &a)) die("IOAS_ALLOC");
    struct hwpt_alloc h = { sizeof h, 4, b.out_devid, a.out_ioas_id, 0, 0, 0, 0, 0, fa.out_fault_id, 0 };
    if (ioctl(fd, IO(0x89), &h)) die("HWPT_ALLOC");
    struct attach at = { sizeof at, 0, h.out_hwpt_id, 0 };
    if (ioctl(dev, IO(119), &at)) die("attach");
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
            struct dma_req rq = { "IODM", 2, 0, 0, BASE + i * 4096, 4, 0, "dma!" };
            struct dma_rep rp;
            t[i] = now();
            /* The frame is 36 bytes: sizeof would add the struct's tail padding. */
            size_t len = offsetof(struct dma_req, data) + sizeof rq.data;
            if (write(dma, &rq, len) != (ssize_t)len) die("dma write");
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
        struct pgfault rec[8];
        ssize_t k = read(ffd, rec, sizeof rec);
        double t1 = now();
        if (k < 0 && errno == EAGAIN)
            continue;
        if (k <= 0) die("read");
        for (ssize_t j = 0; j < k / 40; j++) {
            long i = (rec[j].addr - BASE) / 4096;
            wake[i] = t1 - t[i];
            struct ioas_map m = { sizeof m, 7, a.out_ioas_id, 0, (uintptr_t)buf + i * 4096, 4096, rec[j].addr };
            if (ioctl(fd, IO(0x85), &m)) die("map");
            struct response r = { rec[j].cookie, 0 };
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
