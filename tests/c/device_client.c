/* A userspace driver for the iommufs dma-engine, written as one would write
 * it for a real vfio-pci device (vfio-device.md §3, §4, §6; the register
 * map of core/pci/models/dma_engine.py): bind the cdev, attach an IOAS, map
 * a buffer, enable memory decode and bus mastering in config space, bind
 * an eventfd to MSI-X vector 0, and drive copies and fills through BAR0
 * with pwrite/pread, waiting for the completion interrupt with poll().
 * The bytes are checked in our own memory. Also the errnos of
 * GET_REGION_INFO and SET_IRQS as a C caller meets them.
 *
 * Prints "ok <check>" per check, "done" at the end; exits 1 at the first
 * mismatch with a "FAIL" line.
 *
 *   device_client MOUNT VFIO_NODE      (a dma-engine: vfio1, vfio3, vfio4)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"          /* fail(); uapi.h */

/* dma-engine registers (BAR0) */
enum {
    REG_ID = 0x00, REG_SRC_LO = 0x08, REG_SRC_HI = 0x0c, REG_DST_LO = 0x10, REG_DST_HI = 0x14,
    REG_LENGTH = 0x18, REG_OP = 0x1c, REG_PATTERN = 0x20, REG_CONTROL = 0x28, REG_DOORBELL = 0x2c,
    REG_STATUS = 0x30, REG_ERROR = 0x34, REG_COMPLETED = 0x40, REG_IRQ_STATUS = 0x44,
};
#define OP_COPY 0
#define OP_FILL 1
#define CTL_IRQ 2
#define STATUS_DONE 1

#define IOVA 0x40000000ULL
#define BUF_SIZE (2u << 20)
#define LEN (256u * 1024)

static int devfd;

static off_t region(unsigned index, uint64_t pos)
{
    return (off_t)(((uint64_t)index << VFIO_PCI_OFFSET_SHIFT) | pos);
}

static uint32_t cfg_read(unsigned pos, unsigned size)
{
    uint32_t v = 0;
    if (pread(devfd, &v, size, region(VFIO_PCI_CONFIG_REGION_INDEX, pos)) != (ssize_t)size)
        fail("config pread", -errno, size);
    return v;
}

static void cfg_write(unsigned pos, unsigned size, uint32_t v)
{
    if (pwrite(devfd, &v, size, region(VFIO_PCI_CONFIG_REGION_INDEX, pos)) != (ssize_t)size)
        fail("config pwrite", -errno, size);
}

static uint32_t reg_read(unsigned off)
{
    uint32_t v;
    if (pread(devfd, &v, 4, region(0, off)) != 4)
        fail("BAR0 pread", -errno, 4);
    return v;
}

static void reg_write(unsigned off, uint32_t v)
{
    if (pwrite(devfd, &v, 4, region(0, off)) != 4)
        fail("BAR0 pwrite", -errno, 4);
}

/* SET_IRQS with ``count`` s32 fds (or none for DATA_NONE); returns ioctl()'s result. */
static int set_irqs(uint32_t argsz, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                    const int32_t *fds)
{
    union {
        struct vfio_irq_set s;
        unsigned char raw[sizeof(struct vfio_irq_set) + 16 * sizeof(int32_t)];
    } u;
    memset(&u, 0, sizeof(u));
    u.s.argsz = argsz;
    u.s.flags = flags;
    u.s.index = index;
    u.s.start = start;
    u.s.count = count;
    if (fds)
        memcpy(u.s.data, fds, count * sizeof(int32_t));
    return ioctl(devfd, VFIO_DEVICE_SET_IRQS, &u.s);
}

/* One descriptor with the completion interrupt; waits for it on ``efd``. */
static void run_and_wait(int efd, uint32_t op, uint64_t src, uint64_t dst, uint32_t len, uint32_t pattern)
{
    reg_write(REG_SRC_LO, (uint32_t)src);
    reg_write(REG_SRC_HI, (uint32_t)(src >> 32));
    reg_write(REG_DST_LO, (uint32_t)dst);
    reg_write(REG_DST_HI, (uint32_t)(dst >> 32));
    reg_write(REG_LENGTH, len);
    reg_write(REG_OP, op);
    reg_write(REG_PATTERN, pattern);
    reg_write(REG_CONTROL, CTL_IRQ);
    reg_write(REG_DOORBELL, 1);
    struct pollfd p = { efd, POLLIN, 0 };
    if (poll(&p, 1, 5000) != 1 || !(p.revents & POLLIN))
        fail("completion interrupt (poll)", p.revents, POLLIN);
    uint64_t n;
    if (read(efd, &n, 8) != 8 || n != 1)
        fail("eventfd count", (long)n, 1);
    if (reg_read(REG_STATUS) != STATUS_DONE)
        fail("STATUS", reg_read(REG_STATUS), STATUS_DONE);
    reg_write(REG_IRQ_STATUS, 1);         /* acknowledge (RW1C) */
}

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 3) {
        fprintf(stderr, "usage: device_client MOUNT VFIO_NODE\n");
        return 2;
    }
    const char *mnt = argv[1], *node = argv[2];

    snprintf(path, sizeof(path), "%s/iommu", mnt);
    int iommufd = open(path, O_RDWR);
    if (iommufd < 0)
        fail("open iommu", -errno, 0);
    snprintf(path, sizeof(path), "%s/vfio/devices/%s", mnt, node);
    devfd = open(path, O_RDWR);
    if (devfd < 0)
        fail("open vfio node", -errno, 0);

    struct vfio_region_info ri = { sizeof(ri), 0, VFIO_PCI_CONFIG_REGION_INDEX, 0, 0, 0 };
    expect_err("region info before BIND -> EINVAL", ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri), EINVAL);
    uint32_t v;
    expect_err("config pread before BIND -> EINVAL",
               (int)pread(devfd, &v, 4, region(VFIO_PCI_CONFIG_REGION_INDEX, 0)), EINVAL);

    /* A process may bind the device as soon as the previous user's close has landed. */
    struct vfio_device_bind_iommufd bind = { sizeof(bind), 0, iommufd, 0, 0 };
    int r, tries = 0;
    while ((r = ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &bind)) != 0 && errno == EBUSY && tries++ < 200)
        usleep(50000);
    expect_ok("bind", r);
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    expect_ok("ioas_alloc", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
    struct vfio_device_attach_iommufd_pt at = { sizeof(at), 0, al.out_ioas_id, 0 };
    expect_ok("attach", ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
    unsigned char *buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        fail("mmap", -errno, 0);
    struct iommu_ioas_map map = { sizeof(map),
        IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        al.out_ioas_id, 0, (uintptr_t)buf, BUF_SIZE, IOVA };
    expect_ok("map the buffer", ioctl(iommufd, IOMMU_IOAS_MAP, &map));

    /* GET_INFO and GET_REGION_INFO (§3.1, §3.2). */
    struct vfio_device_info di = { sizeof(di), 0, 0, 0, 0, 0 };
    expect_ok("device info", ioctl(devfd, VFIO_DEVICE_GET_INFO, &di));
    if (di.flags != (VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET) || di.num_regions != 9 || di.num_irqs != 5)
        fail("device info", di.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    ri.index = 0;
    expect_ok("BAR0 region info", ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri));
    if (ri.size != 4096 || ri.offset != 0 || ri.flags != (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE))
        fail("BAR0 size", (long)ri.size, 4096);
    ri.index = VFIO_PCI_CONFIG_REGION_INDEX;
    expect_ok("config region info", ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri));
    if ((ri.size != 256 && ri.size != 4096) || ri.offset != 7ULL << VFIO_PCI_OFFSET_SHIFT)
        fail("config region size", (long)ri.size, 4096);
    uint64_t cfg_size = ri.size;
    ri.index = VFIO_PCI_VGA_REGION_INDEX;
    expect_err("VGA region info -> EINVAL", ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri), EINVAL);
    ri.index = 9;
    expect_err("region 9 info -> EINVAL", ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri), EINVAL);
    ri.argsz = 31;
    ri.index = 0;
    expect_err("region info argsz 31 -> EINVAL", ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri), EINVAL);
    expect_err("region info NULL -> EFAULT", ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, NULL), EFAULT);
    expect_err("config pread past the end -> EFAULT",
               (int)pread(devfd, &v, 4, region(VFIO_PCI_CONFIG_REGION_INDEX, cfg_size - 2)), EFAULT);

    /* Config space: the device, then memory decode and bus mastering on. */
    if (cfg_read(0, 4) != 0x0001d1f5)
        fail("vendor/device", cfg_read(0, 4), 0x0001d1f5);
    expect_err("BAR0 with memory decode off -> EIO", (int)pread(devfd, &v, 4, region(0, REG_ID)), EIO);
    cfg_write(0x04, 2, 0x0006);
    if (cfg_read(0x04, 2) != 0x0006)
        fail("command", cfg_read(0x04, 2), 6);
    printf("ok memory and bus master enabled\n");
    if (reg_read(REG_ID) != 0x414d4449)
        fail("ID register", reg_read(REG_ID), 0x414d4449);
    printf("ok ID register reads IDMA\n");

    /* IRQ info and SET_IRQS errnos (§3.3, §3.4). */
    struct vfio_irq_info ii = { sizeof(ii), 0, VFIO_PCI_MSIX_IRQ_INDEX, 0 };
    expect_ok("MSI-X irq info", ioctl(devfd, VFIO_DEVICE_GET_IRQ_INFO, &ii));
    if (ii.count != 4 || ii.flags != (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE))
        fail("MSI-X count", ii.count, 4);
    ii.index = 5;
    expect_err("irq info index 5 -> EINVAL", ioctl(devfd, VFIO_DEVICE_GET_IRQ_INFO, &ii), EINVAL);
    int efd = eventfd(0, EFD_CLOEXEC);
    int pipefd[2];
    if (efd < 0 || pipe(pipefd))
        fail("eventfd/pipe", -errno, 0);
    const uint32_t trig_fd = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    int32_t fds[5] = { efd, efd, efd, efd, efd };
    expect_err("set_irqs argsz 19 -> EINVAL", set_irqs(19, trig_fd, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, fds), EINVAL);
    expect_err("set_irqs 5 of 4 vectors -> EINVAL",
               set_irqs(20 + 20, trig_fd, VFIO_PCI_MSIX_IRQ_INDEX, 0, 5, fds), EINVAL);
    expect_err("set_irqs data beyond argsz -> EINVAL",
               set_irqs(20 + 4, trig_fd, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2, fds), EINVAL);
    expect_err("set_irqs MSI-X MASK -> ENOTTY",
               set_irqs(20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, NULL),
               ENOTTY);
    expect_err("set_irqs loopback while disabled -> EINVAL",
               set_irqs(20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1,
                        NULL), EINVAL);
    int32_t bad = 1000;
    expect_err("set_irqs closed fd -> EBADF", set_irqs(24, trig_fd, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, &bad), EBADF);
    expect_err("set_irqs pipe -> EINVAL", set_irqs(24, trig_fd, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, &pipefd[0]), EINVAL);
    expect_ok("MSI-X vector 0 -> eventfd", set_irqs(24, trig_fd, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, fds));

    /* The driver's job: copy, then fill, each ended by the interrupt. */
    for (unsigned i = 0; i < LEN; i++)
        buf[i] = (unsigned char)(i * 7 + (i >> 9));
    run_and_wait(efd, OP_COPY, IOVA, IOVA + (1u << 20), LEN, 0);
    printf("ok completion interrupt on the MSI-X eventfd\n");
    if (memcmp(buf, buf + (1u << 20), LEN))
        fail("copied bytes", 0, 1);
    printf("ok copy landed in the client's buffer\n");
    run_and_wait(efd, OP_FILL, 0, IOVA + (1u << 20) + 3 * 4096, 4096 + 2, 0x5aa5c33c);
    for (unsigned i = 0; i < 4096 + 2; i++)
        if (buf[(1u << 20) + 3 * 4096 + i] != ((0x5aa5c33cu >> (8 * (i % 4))) & 0xff))
            fail("filled byte", i, 0);
    if (buf[(1u << 20) + 4 * 4096 + 2] != buf[4 * 4096 + 2])
        fail("byte after the fill", 0, 1);
    printf("ok fill landed in the client's buffer\n");
    if (reg_read(REG_COMPLETED) != 2)
        fail("COMPLETED", reg_read(REG_COMPLETED), 2);

    /* Bus master off: the engine's DMA fails with EIO, nothing moves, and
     * the completion interrupt still comes. */
    cfg_write(0x04, 2, 0x0002);
    buf[(1u << 20)] ^= 0xff;
    reg_write(REG_SRC_LO, (uint32_t)IOVA);
    reg_write(REG_DST_LO, (uint32_t)(IOVA + (1u << 20)));
    reg_write(REG_LENGTH, 64);
    reg_write(REG_OP, OP_COPY);
    reg_write(REG_DOORBELL, 1);
    if (reg_read(REG_ERROR) != EIO || buf[(1u << 20)] == buf[0])
        fail("DMA with bus master clear", reg_read(REG_ERROR), EIO);
    printf("ok bus master clear refuses the DMA\n");

    /* Count 0 disables MSI-X. */
    expect_ok("MSI-X disabled",
              set_irqs(20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0, NULL));
    expect_ok("reset", ioctl(devfd, VFIO_DEVICE_RESET, NULL));
    if (reg_read(REG_COMPLETED) != 0)
        fail("COMPLETED after reset", reg_read(REG_COMPLETED), 0);
    expect_ok("synchronous close", ioctl(devfd, IOMMUFS_SYNC_CLOSE, NULL));
    close(devfd);
    close(iommufd);
    printf("done\n");
    return 0;
}
