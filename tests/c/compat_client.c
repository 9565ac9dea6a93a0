/* A legacy VFIO type1 user of iommufs's /dev/iommu, written only from the
 * reference (§11.4 type1 compatibility, §7 IOMMU_VFIO_IOAS, §11.2 layouts)
 * and DESIGN.md (the DMA node), declared in uapi.h: real ioctl() calls.
 * The container ioctls go to the iommufd itself; the device comes in
 * through the VFIO cdev (bind + attach to the compat IOAS).
 * Prints "ok <check>" per check; exits 1 at the first mismatch ("FAIL").
 *
 *   compat_client MOUNT DEVICE_NAME VFIO_NODE
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

static void expect_val(const char *what, int r, int want)
{
    if (r != want)
        fail(what, r == -1 ? -errno : r, want);
    printf("ok %s\n", what);
}

static int unmap_dma(int fd, uint32_t flags, uint64_t iova, uint64_t size, uint64_t *out)
{
    struct vfio_iommu_type1_dma_unmap u = { sizeof(u), flags, iova, size };
    int r = ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &u);
    *out = u.size;
    return r;
}

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 4) {
        fprintf(stderr, "usage: compat_client MOUNT DEVICE VFIO_NODE\n");
        return 2;
    }
    const char *mnt = argv[1], *name = argv[2], *node = argv[3];
    const long page = 4096;

    snprintf(path, sizeof(path), "%s/iommu", mnt);
    int container = open(path, O_RDWR);
    if (container < 0)
        fail("open iommu", -errno, 0);

    /* What a type1 user asks first. */
    expect_val("GET_API_VERSION = 0", ioctl(container, VFIO_GET_API_VERSION), 0);
    expect_val("CHECK_EXTENSION(TYPE1v2) = 1", ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1);
    expect_val("CHECK_EXTENSION(TYPE1) = 1", ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU), 1);
    expect_val("CHECK_EXTENSION(UNMAP_ALL) = 1", ioctl(container, VFIO_CHECK_EXTENSION, VFIO_UNMAP_ALL), 1);
    expect_val("CHECK_EXTENSION(UPDATE_VADDR) = 0", ioctl(container, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR), 0);
    expect_err("CHECK_EXTENSION(DMA_CC) without compat IOAS -> ENODEV",
               ioctl(container, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU), ENODEV);
    expect_err("SET_IOMMU(7) -> EINVAL", ioctl(container, VFIO_SET_IOMMU, 7), EINVAL);
    expect_err("SET_IOMMU(TYPE1v2) without compat IOAS -> ENODEV",
               ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), ENODEV);

    /* The compat IOAS. */
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    expect_val("IOAS_ALLOC", ioctl(container, IOMMU_IOAS_ALLOC, &al), 0);
    struct iommu_vfio_ioas vi = { sizeof(vi), 0, IOMMU_VFIO_IOAS_GET, 0 };
    expect_err("VFIO_IOAS GET before SET -> ENODEV", ioctl(container, IOMMU_VFIO_IOAS, &vi), ENODEV);
    vi.op = IOMMU_VFIO_IOAS_SET;
    vi.ioas_id = al.out_ioas_id + 100;
    expect_err("VFIO_IOAS SET unknown id -> ENOENT", ioctl(container, IOMMU_VFIO_IOAS, &vi), ENOENT);
    vi.ioas_id = al.out_ioas_id;
    expect_val("VFIO_IOAS SET", ioctl(container, IOMMU_VFIO_IOAS, &vi), 0);
    vi.op = IOMMU_VFIO_IOAS_GET;
    vi.ioas_id = 0;
    expect_val("VFIO_IOAS GET", ioctl(container, IOMMU_VFIO_IOAS, &vi), 0);
    if (vi.ioas_id != al.out_ioas_id)
        fail("compat ioas id", vi.ioas_id, al.out_ioas_id);

    /* The device, attached to the compat IOAS. */
    snprintf(path, sizeof(path), "%s/vfio/devices/%s", mnt, node);
    int devfd = open(path, O_RDWR);
    if (devfd < 0)
        fail("open vfio", -errno, 0);
    struct vfio_device_bind_iommufd b = { sizeof(b), 0, container, 0, 0 };
    expect_val("bind", ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b), 0);
    struct vfio_device_attach_iommufd_pt at = { sizeof(at), 0, al.out_ioas_id, 0 };
    expect_val("attach compat IOAS", ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at), 0);
    expect_val("CHECK_EXTENSION(DMA_CC) = 1", ioctl(container, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU), 1);
    expect_val("SET_IOMMU(TYPE1v2)", ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), 0);

    /* GET_INFO: once for the size of the capability chain, then in full. */
    struct vfio_iommu_type1_info info = { 15, 0, 0, 0, 0 };
    expect_err("GET_INFO argsz 15 -> EINVAL", ioctl(container, VFIO_IOMMU_GET_INFO, &info), EINVAL);
    info.argsz = sizeof(info);
    expect_val("GET_INFO for the size", ioctl(container, VFIO_IOMMU_GET_INFO, &info), 0);
    if (info.argsz != 24 + 16 + 16 + 2 * 16 || info.cap_offset != 0
        || info.flags != (VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS)
        || info.iova_pgsizes != (4096 | (2 << 20) | (1 << 30)))
        fail("GET_INFO first answer", info.argsz, 88);
    printf("ok GET_INFO gives the chain size, flags and page sizes\n");
    uint32_t need = info.argsz;
    unsigned char *raw = calloc(1, need);
    memcpy(raw, &need, 4);
    expect_val("GET_INFO with the chain", ioctl(container, VFIO_IOMMU_GET_INFO, raw), 0);
    struct vfio_iommu_type1_info *full = (struct vfio_iommu_type1_info *)raw;
    if (full->cap_offset != sizeof(*full))
        fail("cap_offset", full->cap_offset, sizeof(*full));
    int seen = 0;
    for (uint32_t off = full->cap_offset; off; ) {
        struct vfio_info_cap_header *h = (struct vfio_info_cap_header *)(raw + off);
        if (h->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
            struct vfio_iommu_type1_info_dma_avail *a = (void *)h;
            if (a->avail != UINT32_MAX)
                fail("dma avail", a->avail, UINT32_MAX);
            seen |= 1;
        } else if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
            struct vfio_iommu_type1_info_cap_iova_range *c = (void *)h;
            struct vfio_iova_range *r = c->iova_ranges;
            if (c->nr_iovas != 2 || r[0].start != 0 || r[0].end != 0xfedfffffull
                || r[1].start != 0xfef00000ull || r[1].end != (1ull << 48) - 1)
                fail("iova ranges", c->nr_iovas, 2);
            seen |= 2;
        }
        off = h->next;
    }
    if (seen != 3)
        fail("caps seen", seen, 3);
    printf("ok capability chain: DMA_AVAIL U32_MAX, IOVA ranges around the MSI window\n");

    /* MAP_DMA of our own buffer, and the device writes into it. */
    size_t len = 2 << 20;
    unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        fail("mmap", -errno, 0);
    memset(mem, 0, len);
    struct vfio_iommu_type1_dma_map m = { sizeof(m), VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                          (uintptr_t)mem, 0x100000, len };
    struct vfio_iommu_type1_dma_map bad = m;
    bad.flags |= VFIO_DMA_MAP_FLAG_VADDR;
    expect_err("MAP_DMA with VADDR -> EINVAL", ioctl(container, VFIO_IOMMU_MAP_DMA, &bad), EINVAL);
    bad = m;
    bad.argsz = 31;
    expect_err("MAP_DMA argsz 31 -> EINVAL", ioctl(container, VFIO_IOMMU_MAP_DMA, &bad), EINVAL);
    expect_val("MAP_DMA", ioctl(container, VFIO_IOMMU_MAP_DMA, &m), 0);
    expect_err("MAP_DMA again -> EEXIST", ioctl(container, VFIO_IOMMU_MAP_DMA, &m), EEXIST);

    snprintf(path, sizeof(path), "%s/devices/%s/dma", mnt, name);
    int dmafd = open(path, O_RDWR);
    if (dmafd < 0)
        fail("open dma", -errno, 0);
    char msg[] = "written by the device through type1";
    int st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, 0x100000 + 0x1234, msg, sizeof(msg));
    if (st != 0 || memcmp(mem + 0x1234, msg, sizeof(msg)))
        fail("dma write", st, 0);
    printf("ok device DMA landed in the client's buffer\n");

    /* UNMAP_DMA, type1v2: no partial unmap. */
    uint64_t out;
    expect_err("UNMAP_DMA partial (v2) -> ENOENT", unmap_dma(container, 0, 0x100000, page, &out), ENOENT);
    if (out != 0)
        fail("partial unmap size written back", out, 0);
    expect_err("UNMAP_DMA ALL with a size -> EINVAL",
               unmap_dma(container, VFIO_DMA_UNMAP_FLAG_ALL, 0, 5, &out), EINVAL);
    if (out != 5)
        fail("argument error: nothing written back", out, 5);
    expect_val("UNMAP_DMA", unmap_dma(container, 0, 0x100000, len, &out), 0);
    if (out != len)
        fail("unmapped bytes", out, len);
    st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, 0x100000 + 0x1234, msg, 4);
    if (st != -EFAULT)
        fail("dma after unmap", st, -EFAULT);
    printf("ok DMA after UNMAP_DMA -> EFAULT\n");
    expect_val("UNMAP_DMA of nothing", unmap_dma(container, 0, 0x100000, len, &out), 0);
    if (out != 0)
        fail("nothing unmapped", out, 0);

    /* Type1 (v1): unmapping part of a mapping splits it. */
    expect_val("SET_IOMMU(TYPE1)", ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU), 0);
    m.iova = 0x400000;
    m.size = 16 * page;
    expect_val("MAP_DMA 16 pages", ioctl(container, VFIO_IOMMU_MAP_DMA, &m), 0);
    expect_val("UNMAP_DMA 4 pages in the middle (v1)", unmap_dma(container, 0, 0x400000 + 4 * page, 4 * page, &out), 0);
    if (out != (uint64_t)(4 * page))
        fail("split unmap bytes", out, 4 * page);
    expect_err("UNMAP_DMA misaligned cut -> EINVAL", unmap_dma(container, 0, 0x400000 + 0x800, page, &out), EINVAL);
    st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, 0x400000 + 10 * page, msg, sizeof(msg));
    if (st != 0 || memcmp(mem + 10 * page, msg, sizeof(msg)))
        fail("dma into the piece after the hole", st, 0);
    st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, 0x400000 + page, "front", 5);
    if (st != 0 || memcmp(mem + page, "front", 5))
        fail("dma into the piece before the hole", st, 0);
    st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, 0x400000 + 5 * page, msg, 4);
    if (st != -EFAULT)
        fail("dma into the hole", st, -EFAULT);
    printf("ok the pieces still translate, the hole faults\n");
    expect_val("UNMAP_DMA ALL", unmap_dma(container, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0, &out), 0);
    if (out != (uint64_t)(12 * page))
        fail("unmap all bytes", out, 12 * page);

    /* CLEAR: the container ioctls lose their IOAS. */
    vi.op = IOMMU_VFIO_IOAS_CLEAR;
    expect_val("VFIO_IOAS CLEAR", ioctl(container, IOMMU_VFIO_IOAS, &vi), 0);
    expect_err("MAP_DMA after CLEAR -> ENODEV", ioctl(container, VFIO_IOMMU_MAP_DMA, &m), ENODEV);
    expect_err("unknown container ioctl -> ENOTTY", ioctl(container, VFIO_IOMMU_DIRTY_PAGES, NULL), ENOTTY);

    close(dmafd);
    close(devfd);
    close(container);
    printf("done\n");
    return 0;
}
