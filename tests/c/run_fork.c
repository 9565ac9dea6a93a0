/* A forked child uses its parent's /dev/iommu, VFIO and DMA fds with its
 * own memory: it maps its copy of a buffer (same virtual address as the
 * parent's, different bytes) and the device must see the child's bytes
 * there and the parent's at the parent's mapping; the child's DMA write
 * lands in the child's memory only. The parent's context survives the
 * child closing its copies of the fds.
 *
 *   run_fork DEVICE_NAME VFIO_NUMBER */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "util.h"

#define IOVA_P 0x100000ull
#define IOVA_C 0x200000ull
#define LEN 65536u

static int all(const unsigned char *p, unsigned char v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    char vfio[64];
    snprintf(vfio, sizeof(vfio), "/dev/vfio/devices/vfio%s", argv[2]);
    int iommufd = open("/dev/iommu", O_RDWR);
    int devfd = open(vfio, O_RDWR);
    int dmafd = open(dma_path(argv[1]), O_RDWR);
    if (iommufd < 0 || devfd < 0 || dmafd < 0)
        fail("open", -errno, 0);
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    check_ok("IOAS_ALLOC", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
    struct vfio_device_bind_iommufd b = { sizeof(b), 0, iommufd, 0, 0 };
    check_ok("BIND", ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b));
    struct vfio_device_attach_iommufd_pt at = { sizeof(at), 0, al.out_ioas_id, 0 };
    check_ok("ATTACH", ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));

    unsigned char *buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 'P', LEN);
    struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                                | IOMMU_IOAS_MAP_WRITEABLE, al.out_ioas_id, 0, (uintptr_t)buf, LEN,
                                IOVA_P };
    check_ok("MAP parent", ioctl(iommufd, IOMMU_IOAS_MAP, &m));
    fflush(stdout);

    pid_t pid = fork();
    if (pid < 0)
        fail("fork", -errno, 0);
    if (pid == 0) {
        static unsigned char got[LEN];
        memset(buf, 'C', LEN);                 /* the child's own copy now */
        struct iommu_ioas_map mc = m;
        mc.iova = IOVA_C;
        check_ok("MAP child", ioctl(iommufd, IOMMU_IOAS_MAP, &mc));
        if (device_dma(dmafd, IOMMUFS_DMA_OP_READ, IOVA_C, got, LEN) != 0 || !all(got, 'C', LEN))
            fail("device reads the child's bytes at the child's mapping", got[0], 'C');
        printf("ok device read the child's memory\n");
        if (device_dma(dmafd, IOMMUFS_DMA_OP_READ, IOVA_P, got, LEN) != 0 || !all(got, 'P', LEN))
            fail("device reads the parent's bytes at the parent's mapping", got[0], 'P');
        printf("ok device read the parent's memory at the parent's mapping\n");
        memset(got, 'D', LEN);
        if (device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, IOVA_C, got, LEN) != 0 || !all(buf, 'D', LEN))
            fail("device wrote the child's memory", buf[0], 'D');
        printf("ok device wrote the child's memory\n");
        struct iommu_ioas_unmap u = { sizeof(u), al.out_ioas_id, IOVA_C, LEN };
        check_ok("UNMAP child", ioctl(iommufd, IOMMU_IOAS_UNMAP, &u));
        close(dmafd);
        close(devfd);
        close(iommufd);
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("child", status, 0);
    if (!all(buf, 'P', LEN))
        fail("the parent's memory untouched by the child's DMA", buf[0], 'P');
    printf("ok parent's memory untouched\n");
    static unsigned char got[LEN];
    if (device_dma(dmafd, IOMMUFS_DMA_OP_READ, IOVA_P, got, LEN) != 0 || !all(got, 'P', LEN))
        fail("device still reads the parent's mapping", got[0], 'P');
    struct iommu_ioas_unmap u = { sizeof(u), al.out_ioas_id, IOVA_P, LEN };
    check_ok("UNMAP parent", ioctl(iommufd, IOMMU_IOAS_UNMAP, &u));
    printf("ok parent's context survived the child's close\n");
    printf("done\n");
    return 0;
}
