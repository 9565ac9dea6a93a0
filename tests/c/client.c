/* A C client of iommufs, written only from DESIGN.md and the reference
 * layouts (reference §5, §11.2; declared in uapi.h): real ioctl() calls, the
 * DMA node's frames. Prints "ok <check>" per check; exits 1 at the
 * first mismatch with a "FAIL" line.
 *
 *   client MOUNT DEVICE_NAME VFIO_NODE
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"          /* fail(), device_dma(); uapi.h */

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 4) {
        fprintf(stderr, "usage: client MOUNT DEVICE VFIO_NODE\n");
        return 2;
    }
    const char *mnt = argv[1], *name = argv[2], *node = argv[3];

    snprintf(path, sizeof(path), "%s/iommu", mnt);
    int iommufd = open(path, O_RDWR);
    if (iommufd < 0)
        fail("open iommu", -errno, 0);

    expect_err("destroy NULL -> EFAULT", ioctl(iommufd, IOMMU_DESTROY, NULL), EFAULT);
    struct iommu_destroy d = { sizeof(d), 99 };
    expect_err("destroy unknown -> ENOENT", ioctl(iommufd, IOMMU_DESTROY, &d), ENOENT);
    struct iommu_ioas_alloc small = { 8, 0, 0 };
    expect_err("ioas_alloc size 8 -> EINVAL", ioctl(iommufd, IOMMU_IOAS_ALLOC, &small), EINVAL);

    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    expect_ok("ioas_alloc", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
    if (al.out_ioas_id != 1)
        fail("first id", al.out_ioas_id, 1);
    uint32_t ioas = al.out_ioas_id;

    snprintf(path, sizeof(path), "%s/vfio/devices/%s", mnt, node);
    int devfd = open(path, O_RDWR);
    if (devfd < 0)
        fail("open vfio", -errno, 0);
    struct vfio_device_attach_iommufd_pt at = { sizeof(at), 0, ioas, 0 };
    expect_err("attach before bind -> EINVAL", ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at), EINVAL);
    struct vfio_device_bind_iommufd b = { sizeof(b), 0, iommufd, 0, 0 };
    expect_ok("bind", ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b));
    if (b.out_devid != 2)
        fail("dev_id", b.out_devid, 2);
    expect_err("bind twice -> EINVAL", ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b), EINVAL);
    d.id = b.out_devid;
    expect_err("destroy device -> EBUSY", ioctl(iommufd, IOMMU_DESTROY, &d), EBUSY);

    size_t len = 2 << 20;
    unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(mem, 0, len);
    struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                                | IOMMU_IOAS_MAP_WRITEABLE, ioas, 0, (uintptr_t)mem, len,
                                0x100000 };
    expect_ok("map fixed", ioctl(iommufd, IOMMU_IOAS_MAP, &m));
    struct iommu_ioas_map m2 = m;
    expect_err("map overlapping -> EEXIST", ioctl(iommufd, IOMMU_IOAS_MAP, &m2), EEXIST);

    at.pt_id = ioas;
    expect_ok("attach ioas", ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
    if (at.pt_id != 3)
        fail("auto hwpt id", at.pt_id, 3);
    uint32_t hwpt = at.pt_id;

    struct iommu_iova_range rs[4];
    struct iommu_ioas_iova_ranges ir = { sizeof(ir), ioas, 4, 0, (uintptr_t)rs, 0 };
    expect_ok("iova_ranges", ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &ir));
    if (ir.num_iovas != 2 || rs[0].start != 0 || rs[0].last != 0xfedfffffull
        || rs[1].start != 0xfef00000ull || rs[1].last != (1ull << 48) - 1)
        fail("ranges", ir.num_iovas, 2);
    printf("ok ranges exclude the MSI window and the aperture\n");

    snprintf(path, sizeof(path), "%s/devices/%s/dma", mnt, name);
    int dmafd = open(path, O_RDWR);
    if (dmafd < 0)
        fail("open dma", -errno, 0);
    unsigned char pat[4096];
    for (int i = 0; i < 4096; i++)
        pat[i] = (unsigned char)(i * 13 + 1);
    int st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, 0x100000 + 0x3000, pat, sizeof(pat));
    if (st != 0)
        fail("dma write status", st, 0);
    if (memcmp(mem + 0x3000, pat, sizeof(pat)))
        fail("pattern in client memory", 0, 1);
    printf("ok device DMA landed in the client's memory\n");
    st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, 0x100000 + len, pat, 16);
    if (st != -EFAULT)
        fail("dma outside mapping", st, -EFAULT);
    printf("ok DMA outside the mapping -> EFAULT\n");

    struct iommu_ioas_unmap u = { sizeof(u), ioas, 0x100000 + 0x1000, 0x1000 };
    expect_err("partial unmap -> ENOENT", ioctl(iommufd, IOMMU_IOAS_UNMAP, &u), ENOENT);
    d.id = ioas;
    expect_err("destroy busy ioas -> EBUSY", ioctl(iommufd, IOMMU_DESTROY, &d), EBUSY);
    u.iova = 0;
    u.length = UINT64_MAX;
    expect_ok("unmap all", ioctl(iommufd, IOMMU_IOAS_UNMAP, &u));
    if (u.length != len)
        fail("unmapped bytes", u.length, len);

    struct vfio_device_detach_iommufd_pt dt = { sizeof(dt), 0, 0 };
    expect_ok("detach", ioctl(devfd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt));
    d.id = hwpt;
    expect_err("auto hwpt gone after detach -> ENOENT", ioctl(iommufd, IOMMU_DESTROY, &d), ENOENT);
    d.id = ioas;
    expect_ok("destroy ioas", ioctl(iommufd, IOMMU_DESTROY, &d));
    close(dmafd);
    close(devfd);
    close(iommufd);
    printf("done\n");
    return 0;
}
