/* A fault handler in C, from the reference layouts (§5, §10.1; uapi.h) and
 * README: IOMMU_FAULT_QUEUE_ALLOC, IOMMUFS_FD_PATH to open the returned node,
 * epoll, read whole groups, map the faulting pages, write SUCCESS responses.
 *
 *   fault_handler MOUNT VFIO_NODE GROUPS
 *
 * Prints "ready DEV_ID" once set up, then "served N TEXT" (TEXT: the first
 * 12 bytes the device wrote at IOVA 0x70000000) after GROUPS groups. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uapi.h"

static void die(const char *w) { printf("FAIL %s: %s\n", w, strerror(errno)); exit(1); }

int main(int argc, char **argv)
{
    char p[600];
    int groups = atoi(argv[3]);
    snprintf(p, sizeof p, "%s/iommu", argv[1]);
    int fd = open(p, O_RDWR);
    snprintf(p, sizeof p, "%s/vfio/devices/%s", argv[1], argv[2]);
    int dev = open(p, O_RDWR);
    if (fd < 0 || dev < 0) die("open");
    struct vfio_device_bind_iommufd b = { sizeof b, 0, fd, 0, 0 };
    if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b)) die("bind");
    struct iommu_fault_alloc fa = { sizeof fa, 0, 0, 0 };
    if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa)) die("FAULT_QUEUE_ALLOC");
    if ((int32_t)fa.out_fault_fd != -1) die("out_fault_fd is not -1");
    struct iommufs_fd_path fp = { sizeof fp, 0 };
    if (ioctl(fd, IOMMUFS_FD_PATH, &fp)) die("IOMMUFS_FD_PATH");
    snprintf(p, sizeof p, "%s/%s", argv[1], fp.path);
    int ffd = open(p, O_RDWR | O_CLOEXEC);
    if (ffd < 0) die("open fault node");
    struct iommu_ioas_alloc a = { sizeof a, 0, 0 };
    if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) die("IOAS_ALLOC");
    struct iommu_hwpt_alloc h = { sizeof h, IOMMU_HWPT_ALLOC_FAULT_ID_VALID, b.out_devid,
                                  a.out_ioas_id, 0, 0, 0, 0, 0, fa.out_fault_id, 0 };
    if (ioctl(fd, IOMMU_HWPT_ALLOC, &h)) die("HWPT_ALLOC");
    struct vfio_device_attach_iommufd_pt at = { sizeof at, 0, h.out_hwpt_id, 0 };
    if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)) die("attach");
    char *buf = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN };
    ev.data.fd = ffd;
    epoll_ctl(ep, EPOLL_CTL_ADD, ffd, &ev);
    printf("ready %u\n", b.out_devid);
    fflush(stdout);
    int served = 0;
    while (served < groups) {
        struct epoll_event got;
        if (epoll_wait(ep, &got, 1, 10000) != 1) die("epoll_wait timed out");
        struct iommu_hwpt_pgfault recs[32];
        ssize_t n = read(ffd, recs, sizeof recs);
        if (n < 0) die("read");
        for (ssize_t i = 0; i < n / (ssize_t)sizeof recs[0]; i++) {
            struct iommu_ioas_map m = { sizeof m, IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE
                                        | IOMMU_IOAS_MAP_READABLE, a.out_ioas_id, 0,
                                        (uintptr_t)buf + (recs[i].addr - 0x70000000), 4096,
                                        recs[i].addr };
            if (recs[i].dev_id != b.out_devid) die("dev_id");
            if (ioctl(fd, IOMMU_IOAS_MAP, &m)) die("map");
            if (recs[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE) {
                struct iommu_hwpt_page_response r = { recs[i].cookie, IOMMU_PAGE_RESP_SUCCESS };
                if (write(ffd, &r, sizeof r) != 8) die("response");
                served++;
            }
        }
    }
    sleep(1);   /* the DMAs complete after the responses */
    printf("served %d %.12s\n", served, buf);
    return 0;
}
