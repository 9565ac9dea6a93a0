/* An I/O page fault handled by an unmodified program: IOMMU_FAULT_QUEUE_ALLOC
 * gives it a real fault fd (O_CLOEXEC); a PRI device's DMA to an unmapped
 * IOVA waits while the program polls and reads the fault record from that
 * fd, maps memory there and writes the page response; the DMA then lands in
 * the program's buffer. When no fd can be given (RLIMIT_NOFILE), the ioctl
 * fails with EMFILE and leaves no object behind, as the kernel's does.
 *
 *   run_fault DEVICE_NAME VFIO_NUMBER   (a PRI device)
 *   run_fault alloc-only                (prints out_fault_fd) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "util.h"

#define IOVA 0x400000ull
#define LEN 65536u

static const char *dma_dev;
static unsigned char pattern[4096];
static int dma_status = 1;

static void *dma_thread(void *arg)
{
    (void)arg;
    int fd = open(dma_path(dma_dev), O_RDWR);
    if (fd < 0)
        fail("open dma", -errno, 0);
    dma_status = device_dma(fd, IOMMUFS_DMA_OP_WRITE, IOVA + 0x1000, pattern, sizeof(pattern));   /* waits */
    close(fd);
    return NULL;
}

static struct iommu_fault_alloc fault_alloc(int iommufd)
{
    struct iommu_fault_alloc fa = { sizeof(fa), 0, 0, 0 };
    check_ok("FAULT_QUEUE_ALLOC", ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
    return fa;
}

int main(int argc, char **argv)
{
    int iommufd = open("/dev/iommu", O_RDWR);
    if (iommufd < 0)
        fail("open /dev/iommu", -errno, 0);
    if (argc == 2 && !strcmp(argv[1], "alloc-only")) {
        printf("out_fault_fd %d\n", (int32_t)fault_alloc(iommufd).out_fault_fd);
        return 0;
    }
    if (argc < 3)
        return 2;
    dma_dev = argv[1];
    char vfio[64];
    snprintf(vfio, sizeof(vfio), "/dev/vfio/devices/vfio%s", argv[2]);

    struct iommu_fault_alloc fa = fault_alloc(iommufd);
    int ffd = (int32_t)fa.out_fault_fd;
    if (ffd < 0 || ffd == iommufd || fcntl(ffd, F_GETFD) != FD_CLOEXEC)
        fail("out_fault_fd is an O_CLOEXEC fd", ffd, 0);
    printf("ok out_fault_fd is an fd\n");

    int devfd = open(vfio, O_RDWR);
    if (devfd < 0)
        fail("open vfio", -errno, 0);
    struct vfio_device_bind_iommufd b = { sizeof(b), 0, iommufd, 0, 0 };
    check_ok("BIND", ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b));
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    check_ok("IOAS_ALLOC", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
    struct iommu_hwpt_alloc h = { sizeof(h), IOMMU_HWPT_ALLOC_FAULT_ID_VALID, b.out_devid,
                                  al.out_ioas_id, 0, 0, 0, 0, 0, fa.out_fault_id, 0 };
    check_ok("HWPT_ALLOC", ioctl(iommufd, IOMMU_HWPT_ALLOC, &h));
    struct vfio_device_attach_iommufd_pt at = { sizeof(at), 0, h.out_hwpt_id, 0 };
    check_ok("ATTACH", ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
    struct iommu_destroy d = { sizeof(d), fa.out_fault_id };
    if (ioctl(iommufd, IOMMU_DESTROY, &d) != -1 || errno != EBUSY)
        fail("DESTROY of the fault in use -> EBUSY", -errno, -EBUSY);
    printf("ok fault object busy\n");

    unsigned char *buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 0, LEN);
    for (int i = 0; i < 4096; i++)
        pattern[i] = (unsigned char)(i * 31 + 7);
    pthread_t t;
    pthread_create(&t, NULL, dma_thread, NULL);

    struct pollfd pfd = { ffd, POLLIN, 0 };
    if (poll(&pfd, 1, 60000) != 1 || !(pfd.revents & POLLIN))
        fail("poll fault fd", pfd.revents, POLLIN);
    struct iommu_hwpt_pgfault rec;
    if (read(ffd, &rec, sizeof(rec)) != sizeof(rec))
        fail("read fault record", -errno, sizeof(rec));
    if (rec.dev_id != b.out_devid || rec.addr != IOVA + 0x1000 - (IOVA + 0x1000) % 4096
        || !(rec.perm & IOMMU_PGFAULT_PERM_WRITE) || !(rec.flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE)
        || rec.cookie == 0)
        fail("fault record", (long)rec.addr, (long)(IOVA + 0x1000));
    printf("ok fault record read from the fault fd\n");
    struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                                | IOMMU_IOAS_MAP_WRITEABLE, al.out_ioas_id, 0, (uintptr_t)buf, LEN,
                                IOVA };
    check_ok("MAP", ioctl(iommufd, IOMMU_IOAS_MAP, &m));
    struct iommu_hwpt_page_response resp = { rec.cookie, 0 };
    if (write(ffd, &resp, sizeof(resp)) != sizeof(resp))
        fail("write page response", -errno, sizeof(resp));
    pthread_join(t, NULL);
    if (dma_status != 0 || memcmp(buf + 0x1000, pattern, sizeof(pattern)))
        fail("DMA completed into our buffer after the response", dma_status, 0);
    printf("ok DMA completed after the page response\n");

    /* No fd to give: EMFILE, and the object is gone (its ID is free again). */
    struct iommu_ioas_alloc probe = { sizeof(probe), 0, 0 };
    check_ok("IOAS_ALLOC probe", ioctl(iommufd, IOMMU_IOAS_ALLOC, &probe));
    d.id = probe.out_ioas_id;
    check_ok("DESTROY probe", ioctl(iommufd, IOMMU_DESTROY, &d));
    struct rlimit lim, tight;
    getrlimit(RLIMIT_NOFILE, &lim);
    int lowest = dup(0);
    close(lowest);
    tight = lim;
    tight.rlim_cur = (rlim_t)lowest;                 /* every slot below is taken */
    if (setrlimit(RLIMIT_NOFILE, &tight))
        fail("setrlimit", -errno, 0);
    struct iommu_fault_alloc fb = { sizeof(fb), 0, 0, 0 };
    int r = ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fb);
    int err = errno;
    setrlimit(RLIMIT_NOFILE, &lim);
    if (r != -1 || err != EMFILE)
        fail("FAULT_QUEUE_ALLOC with no fd free -> EMFILE", r == -1 ? -err : r, -EMFILE);
    struct iommu_fault_alloc fc = fault_alloc(iommufd);
    if (fc.out_fault_id != probe.out_ioas_id)
        fail("the failed fault object left no ID behind", fc.out_fault_id, probe.out_ioas_id);
    printf("ok EMFILE leaves no object\n");
    close((int32_t)fc.out_fault_fd);
    close(ffd);
    close(devfd);
    close(iommufd);
    printf("done\n");
    return 0;
}
