/* An unmodified-looking iommufd program: opens /dev/iommu and
 * /dev/vfio/devices/vfioN by path, binds, allocates an IOAS, attaches, maps
 * its own buffer and has the device DMA into it (and out of it), then
 * closes everything without unmapping or detaching and starts over at
 * once: the new context must find nothing of the old one (the device binds
 * again, object IDs restart at 1).
 *
 *   run_dma DEVICE_NAME VFIO_NUMBER ROUNDS [EXTRA_FILES]
 *
 * Prints "ok ..." per check, "done" at the end; "FAIL ..." and exit 1 else. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "util.h"

#define IOVA 0x100000ull
#define LEN (2u << 20)

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: run_dma DEVICE_NAME VFIO_NUMBER ROUNDS\n");
        return 2;
    }
    char vfio[64];
    snprintf(vfio, sizeof(vfio), "/dev/vfio/devices/vfio%s", argv[2]);
    int rounds = atoi(argv[3]);
    int nextra = argc > 4 ? atoi(argv[4]) : 0;
    if (nextra > 64)
        fail("extra files", nextra, 64);
    /* Not a compile-time constant: a fortified build calls __open_2. */
    int flags = getenv("RUN_DMA_RDONLY") ? O_RDONLY : O_RDWR;
    unsigned char *mem = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        fail("mmap", -errno, 0);

    for (int round = 1; round <= rounds; round++) {
        int iommufd = open("/dev/iommu", flags);
        if (iommufd < 0)
            fail("open /dev/iommu", -errno, 0);
        struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
        check_ok("IOAS_ALLOC", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
        int devfd = open(vfio, flags);
        if (devfd < 0)
            fail("open vfio", -errno, 0);
        struct vfio_device_bind_iommufd b = { sizeof(b), 0, iommufd, 0, 0 };
        check_ok("BIND", ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b));
        struct vfio_device_attach_iommufd_pt at = { sizeof(at), 0, al.out_ioas_id, 0 };
        check_ok("ATTACH", ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
        if (al.out_ioas_id != 1 || b.out_devid != 2 || at.pt_id != 3)
            fail("ids ioas/dev/hwpt = 1/2/3", al.out_ioas_id * 100 + b.out_devid * 10 + at.pt_id, 123);
        printf("ok round %d ids %u %u %u\n", round, al.out_ioas_id, b.out_devid, at.pt_id);

        memset(mem, 0, LEN);
        struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                                    | IOMMU_IOAS_MAP_WRITEABLE, al.out_ioas_id, 0,
                                    (uintptr_t)mem, LEN, IOVA };
        check_ok("MAP", ioctl(iommufd, IOMMU_IOAS_MAP, &m));

        int dmafd = open(dma_path(argv[1]), O_RDWR);
        if (dmafd < 0)
            fail("open dma", -errno, 0);
        unsigned char pat[4096], back[4096];
        for (int i = 0; i < 4096; i++)
            pat[i] = (unsigned char)(i * 7 + round);
        int st = device_dma(dmafd, IOMMUFS_DMA_OP_WRITE, IOVA + 0x2000, pat, sizeof(pat));
        if (st != 0)
            fail("DMA write status", st, 0);
        if (memcmp(mem + 0x2000, pat, sizeof(pat)))
            fail("DMA write landed in our buffer", 0, 1);
        printf("ok round %d device wrote our buffer\n", round);
        for (int i = 0; i < 4096; i++)
            mem[0x5000 + i] = (unsigned char)(255 - i % 251 - round);
        st = device_dma(dmafd, IOMMUFS_DMA_OP_READ, IOVA + 0x5000, back, sizeof(back));
        if (st != 0)
            fail("DMA read status", st, 0);
        if (memcmp(mem + 0x5000, back, sizeof(back)))
            fail("DMA read saw our buffer", 0, 1);
        printf("ok round %d device read our buffer\n", round);

        /* No UNMAP, DETACH or DESTROY: closing is the teardown. Other
         * files closed just before queue their (asynchronous) FUSE releases
         * ahead of these. */
        int extra[64];
        for (int i = 0; i < nextra; i++)
            if ((extra[i] = open("/dev/iommu", O_RDWR)) < 0)
                fail("open extra", -errno, 0);
        close(dmafd);
        for (int i = 0; i < nextra; i++)
            close(extra[i]);
        close(devfd);
        close(iommufd);
    }
    printf("done\n");
    return 0;
}
