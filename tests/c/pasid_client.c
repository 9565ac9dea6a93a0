/* PASID attach from C with the reference layouts (§8, §11.2, §11.3; uapi.h).
 *
 *   pasid_client MOUNT VFIO_NODE DEVICE_NAME    (a PASID-capable device)
 *
 * One "ok"/"FAIL" line per check; exits 1 if any failed. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uapi.h"

/* A DMA write frame carrying 16 bytes (README, "Device DMA"). */
struct dma_write16 {
    struct iommufs_dma_request req;
    char data[16];
};

static int fails;
static void check(const char *what, int got, int want)
{
    printf("%s %s: got %d want %d\n", got == want ? "ok" : "FAIL", what, got, want);
    fails += got != want;
}
static int rc(int r) { return r < 0 ? -errno : r; }

int main(int argc, char **argv)
{
    char p[512];
    snprintf(p, sizeof p, "%s/iommu", argv[1]);
    int fd = open(p, O_RDWR);
    snprintf(p, sizeof p, "%s/vfio/devices/%s", argv[1], argv[2]);
    int dev = open(p, O_RDWR);
    snprintf(p, sizeof p, "%s/devices/%s/dma", argv[1], argv[3]);
    int dma = open(p, O_RDWR);
    struct vfio_device_bind_iommufd b = { sizeof b, 0, fd, 0, 0 };
    check("bind", rc(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b)), 0);
    struct iommu_ioas_alloc a = { sizeof a, 0, 0 };
    check("ioas", rc(ioctl(fd, IOMMU_IOAS_ALLOC, &a)), 0);
    struct iommu_hwpt_alloc plain = { sizeof plain, 0, b.out_devid, a.out_ioas_id };
    check("plain hwpt", rc(ioctl(fd, IOMMU_HWPT_ALLOC, &plain)), 0);
    struct iommu_hwpt_alloc ph = { sizeof ph, IOMMU_HWPT_ALLOC_PASID, b.out_devid, a.out_ioas_id };
    check("pasid hwpt", rc(ioctl(fd, IOMMU_HWPT_ALLOC, &ph)), 0);
    struct vfio_device_attach_iommufd_pt at = { sizeof at, VFIO_DEVICE_ATTACH_PASID,
                                                a.out_ioas_id, 9 };
    check("IOAS on a PASID", rc(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)), -EINVAL);
    at.pt_id = plain.out_hwpt_id;
    check("non-PASID HWPT on a PASID", rc(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)), -EINVAL);
    at.pt_id = ph.out_hwpt_id; at.pasid = 1u << 20;
    check("PASID beyond the width", rc(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)), -EINVAL);
    at.pasid = 9; at.argsz = 12;
    check("argsz 12 with PASID", rc(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)), -EINVAL);
    at.argsz = sizeof at; at.flags = 2;
    check("unknown attach flag", rc(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)), -EINVAL);
    at.flags = VFIO_DEVICE_ATTACH_PASID;
    check("attach PASID 9", rc(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)), 0);
    check("pt_id written back", at.pt_id, ph.out_hwpt_id);
    struct vfio_device_attach_iommufd_pt rid = { sizeof rid, 0, plain.out_hwpt_id, 0 };
    check("RID on a non-PASID HWPT with a PASID attached",
          rc(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &rid)), -EINVAL);
    char *buf = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct iommu_ioas_map m = { sizeof m, IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE
                                | IOMMU_IOAS_MAP_READABLE, a.out_ioas_id, 0, (uintptr_t)buf,
                                1 << 20, 0x500000 };
    check("map", rc(ioctl(fd, IOMMU_IOAS_MAP, &m)), 0);
    struct dma_write16 rq = { { "IODM", IOMMUFS_DMA_OP_WRITE, IOMMUFS_DMA_FLAG_PASID, 9, 0x500040,
                                16, 0 }, "DMA with PASID 9" };
    struct iommufs_dma_reply rp;
    check("dma write", (int)write(dma, &rq, sizeof rq), (int)sizeof rq);
    check("dma reply", (int)read(dma, &rp, sizeof rp), (int)sizeof rp);
    check("dma status", rp.status, 0);
    check("bytes in my buffer", memcmp(buf + 0x40, "DMA with PASID 9", 16), 0);
    rq.req.pasid = 10;
    write(dma, &rq, sizeof rq);
    read(dma, &rp, sizeof rp);
    check("unattached PASID faults", rp.status, -EFAULT);
    struct vfio_device_detach_iommufd_pt d = { sizeof d, VFIO_DEVICE_DETACH_PASID, 9 };
    check("detach PASID", rc(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d)), 0);
    rq.req.pasid = 9;
    write(dma, &rq, sizeof rq);
    read(dma, &rp, sizeof rp);
    check("detached PASID gone", rp.status, -ENODEV);
    return fails ? 1 : 0;
}
