/* What an iommufd program gets from <linux/iommufd.h> and <linux/vfio.h>
 * (Debian bookworm's headers predate them): the numbers and layouts of
 * reference §2, §5, §11, written from the reference, plus the iommufs
 * device DMA frame (README, "Device DMA"), which stands in for the device. */
#ifndef UAPI_MIN_H
#define UAPI_MIN_H
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define IOMMU_IO(nr) (0x3b00u | (nr))
#define IOMMU_DESTROY IOMMU_IO(0x80)
#define IOMMU_IOAS_ALLOC IOMMU_IO(0x81)
#define IOMMU_IOAS_MAP IOMMU_IO(0x85)
#define IOMMU_IOAS_UNMAP IOMMU_IO(0x86)
#define IOMMU_FAULT_QUEUE_ALLOC IOMMU_IO(0x8e)
#define VFIO_DEVICE_BIND_IOMMUFD IOMMU_IO(100 + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT IOMMU_IO(100 + 19)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT IOMMU_IO(100 + 20)

#define IOMMU_IOAS_MAP_FIXED_IOVA 1
#define IOMMU_IOAS_MAP_WRITEABLE 2
#define IOMMU_IOAS_MAP_READABLE 4

struct iommu_destroy { uint32_t size, id; };
struct iommu_ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iommu_ioas_map {
    uint32_t size, flags, ioas_id, __reserved;
    uint64_t user_va, length, iova;
};
struct iommu_ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct iommu_fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct vfio_device_bind_iommufd {
    uint32_t argsz, flags;
    int32_t iommufd;
    uint32_t out_devid;
    uint64_t token_uuid_ptr;
};
struct vfio_device_attach_iommufd_pt { uint32_t argsz, flags, pt_id, pasid; };
struct vfio_device_detach_iommufd_pt { uint32_t argsz, flags, pasid; };

static inline void fail(const char *what, long got, long want)
{
    printf("FAIL %s: got %ld want %ld\n", what, got, want);
    fflush(stdout);
    exit(1);
}

/* ioctl() returned r: 0 expected. */
static inline void check_ok(const char *what, int r)
{
    if (r != 0)
        fail(what, -errno, 0);
}

/* One device DMA frame on a dma node (op 1 read, 2 write); the status. */
static inline int device_dma(int fd, uint32_t op, uint64_t iova, void *data, uint32_t len)
{
    static unsigned char buf[32 + 65536];
    struct {
        char magic[4];
        uint32_t op, flags, pasid;
        uint64_t iova;
        uint32_t len, rsvd;
    } __attribute__((packed)) req = { {'I', 'O', 'D', 'M'}, op, 0, 0, iova, len, 0 };
    if (len > 65536)
        fail("dma length", len, 65536);
    memcpy(buf, &req, 32);
    size_t n = 32;
    if (op == 2) {
        memcpy(buf + 32, data, len);
        n += len;
    }
    if (write(fd, buf, n) != (ssize_t)n)
        fail("dma write()", -errno, 0);
    ssize_t r = read(fd, buf, sizeof(buf));
    if (r < 24 || memcmp(buf, "IODM", 4))
        fail("dma reply", r, 24);
    int32_t status;
    memcpy(&status, buf + 4, 4);
    if (op == 1 && status == 0)
        memcpy(data, buf + 24, len);
    return status;
}

/* $IOMMUFS_ROOT/devices/<name>/dma, the emulated device's DMA engine. */
static inline const char *dma_path(const char *name)
{
    static char path[4096];
    const char *root = getenv("IOMMUFS_ROOT");
    if (!root)
        fail("IOMMUFS_ROOT unset", 0, 1);
    snprintf(path, sizeof(path), "%s/devices/%s/dma", root, name);
    return path;
}
#endif
