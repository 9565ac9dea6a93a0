/* A selftest-style user of IOMMU_TEST_CMD through an iommufs mount, written
 * like the kernel's iommufd selftests: the reference's declarations (§5,
 * §10.1, §12; uapi.h), real ioctl()/read()/write() calls, one "ok"
 * line per check. Returned fds are opened the way the preload shim does:
 * IOMMUFS_FD_PATH on the iommufd names the node under fds/.
 *
 * usage: selftest_client MOUNT
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

#include "uapi.h"

static const char *mnt;
static int iommufd, checks;

#define OK(cond, ...) do {                                             \
        if (!(cond)) {                                                 \
            printf("FAIL line %d: ", __LINE__);                        \
            printf(__VA_ARGS__);                                       \
            printf(" (errno %d)\n", errno);                            \
            exit(1);                                                   \
        }                                                              \
        printf("ok ");                                                 \
        printf(__VA_ARGS__);                                           \
        printf("\n");                                                  \
        checks++;                                                      \
    } while (0)

static struct iommu_test_cmd cmd(uint32_t op, uint32_t id)
{
    struct iommu_test_cmd c;
    memset(&c, 0, sizeof(c));
    c.size = sizeof(c);
    c.op = op;
    c.id = id;
    return c;
}

static int test(struct iommu_test_cmd *c)
{
    return ioctl(iommufd, IOMMU_TEST_CMD, c) == 0 ? 0 : errno;
}

static int destroy(uint32_t id)
{
    struct iommu_destroy d = { sizeof(d), id };
    return ioctl(iommufd, IOMMU_DESTROY, &d) == 0 ? 0 : errno;
}

/* Open the node of the fd the last fd-returning ioctl returned (as the shim does). */
static int open_returned(void)
{
    struct iommufs_fd_path p;
    memset(&p, 0, sizeof(p));
    p.size = sizeof(p);
    if (ioctl(iommufd, IOMMUFS_FD_PATH, &p) != 0)
        return -1;
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", mnt, p.path);
    return open(path, O_RDWR | O_CLOEXEC);
}

static int check_refs(void *buf, uint64_t len, uint32_t refs)
{
    struct iommu_test_cmd c = cmd(IOMMU_TEST_OP_MD_CHECK_REFS, 0);
    c.check_refs.uptr = (uintptr_t)buf;
    c.check_refs.length = len;
    c.check_refs.refs = refs;
    return test(&c);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MOUNT\n", argv[0]);
        return 2;
    }
    mnt = argv[1];
    char path[512];
    snprintf(path, sizeof(path), "%s/iommu", mnt);
    iommufd = open(path, O_RDWR);
    OK(iommufd >= 0, "open iommu");

    struct iommu_ioas_alloc a = { sizeof(a), 0, 0 };
    OK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0 && a.out_ioas_id == 1, "IOAS_ALLOC = 1");
    uint32_t ioas = a.out_ioas_id;

    struct iommu_test_cmd c = cmd(IOMMU_TEST_OP_MOCK_DOMAIN, ioas);
    OK(test(&c) == 0, "MOCK_DOMAIN");
    uint32_t stdev = c.mock_domain.out_stdev_id, hwpt = c.mock_domain.out_hwpt_id,
             idev = c.mock_domain.out_idev_id;
    OK(stdev == 2 && idev == 3 && hwpt == 4, "ids: stdev 2, device 3, auto HWPT 4");
    OK(destroy(idev) == EBUSY, "DESTROY(device) = EBUSY");

    struct iommu_iova_range ranges[4];
    struct iommu_ioas_iova_ranges r = { sizeof(r), ioas, 4, 0, (uintptr_t)ranges, 0 };
    OK(ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &r) == 0 && r.num_iovas == 1
       && ranges[0].start == MOCK_APERTURE_START && ranges[0].last == MOCK_APERTURE_LAST
       && r.out_iova_alignment == MOCK_PAGE_SIZE,
       "IOVA_RANGES: one range [0x1000000, 0x7fffffff], alignment 2048");

    size_t len = 16 * 4096;
    uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 0, len);
    uint64_t iova = MOCK_APERTURE_START + 0x100000;
    struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                                | IOMMU_IOAS_MAP_WRITEABLE, ioas, 0, (uintptr_t)buf, len, iova };
    OK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0, "IOAS_MAP 64 KiB at 0x1100000");
    m.iova = 0x1000;
    OK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) != 0 && errno == EINVAL, "MAP outside the aperture = EINVAL");

    c = cmd(IOMMU_TEST_OP_MD_CHECK_MAP, hwpt);
    c.check_map.iova = iova; c.check_map.length = len; c.check_map.uptr = (uintptr_t)buf;
    OK(test(&c) == 0, "MD_CHECK_MAP: the mock domain maps the buffer");
    c.check_map.uptr += 4096;
    OK(test(&c) == EINVAL, "MD_CHECK_MAP against other memory = EINVAL");
    c.check_map.uptr = (uintptr_t)buf + 1024;
    OK(test(&c) == EINVAL, "MD_CHECK_MAP misaligned = EINVAL");

    OK(check_refs(buf, len, 1) == 0, "MD_CHECK_REFS = 1 while the domain holds it");
    OK(check_refs(buf, len, 0) == EIO, "MD_CHECK_REFS 0 = EIO");

    /* CREATE_ACCESS returns an fd; the node is opened as the shim will. */
    c = cmd(IOMMU_TEST_OP_CREATE_ACCESS, ioas);
    c.create_access.flags = MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES;
    OK(test(&c) == 0 && c.create_access.out_access_fd == 0xffffffffu, "CREATE_ACCESS, out_access_fd -1");
    int afd = open_returned();
    OK(afd >= 0, "open the access node named by IOMMUFS_FD_PATH");
    uint32_t access_id = 5;
    OK(destroy(access_id) == EBUSY, "the ACCESS object (id 5) is not destroyable");
    char byte;
    OK(read(afd, &byte, 1) < 0 && errno == EINVAL, "read(access fd) = EINVAL");
    OK(ioctl(afd, IOMMU_TEST_CMD, &c) < 0 && errno == ENOTTY, "ioctl on the access fd = ENOTTY");

    c = cmd(IOMMU_TEST_OP_ACCESS_RW, afd);
    char msg[] = "written by an in-kernel access";
    c.access_rw.iova = iova + 4096 - 7;
    c.access_rw.length = sizeof(msg);
    c.access_rw.uptr = (uintptr_t)msg;
    c.access_rw.flags = MOCK_ACCESS_RW_WRITE;
    OK(test(&c) == 0 && memcmp(buf + 4096 - 7, msg, sizeof(msg)) == 0,
       "ACCESS_RW write lands in the buffer, across a page");
    memcpy(buf + 3 * 4096, "from memory", 12);
    char back[12] = { 0 };
    c = cmd(IOMMU_TEST_OP_ACCESS_RW, afd);
    c.access_rw.iova = iova + 3 * 4096;
    c.access_rw.length = 12;
    c.access_rw.uptr = (uintptr_t)back;
    OK(test(&c) == 0 && memcmp(back, "from memory", 12) == 0, "ACCESS_RW read");
    c.access_rw.iova = iova + len;
    OK(test(&c) == ENOENT, "ACCESS_RW past the mapping = ENOENT");

    c = cmd(IOMMU_TEST_OP_ACCESS_PAGES, afd);
    c.access_pages.iova = iova;
    c.access_pages.length = 2 * 4096;
    c.access_pages.uptr = (uintptr_t)buf;
    OK(test(&c) == 0 && c.access_pages.out_access_pages_id == 0, "ACCESS_PAGES -> item 0");
    uint32_t item = c.access_pages.out_access_pages_id;
    OK(check_refs(buf, len, 1) == 0, "still one pin per page (same pages)");
    c.access_pages.uptr = (uintptr_t)buf + 4096;
    OK(test(&c) == EBADE, "ACCESS_PAGES of other memory = EBADE");
    c = cmd(IOMMU_TEST_OP_ACCESS_PAGES, iommufd);
    c.access_pages.iova = iova;
    c.access_pages.length = 4096;
    OK(test(&c) == EBADFD, "ACCESS_PAGES with the iommufd as access = EBADFD");
    int nul = open("/dev/null", O_RDONLY);
    c.id = nul;
    OK(test(&c) == EBADFD, "ACCESS_PAGES with /dev/null = EBADFD");
    close(nul);
    OK(test(&c) == EBADFD, "ACCESS_PAGES with a closed fd = EBADFD");
    c.access_pages.length = (16 << 20) + 1;
    OK(test(&c) == ENOMEM, "ACCESS_PAGES over 16 MiB = ENOMEM (before the fd)");
    c = cmd(IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, afd);
    c.destroy_access_pages.access_pages_id = item;
    OK(test(&c) == 0, "DESTROY_ACCESS_PAGES");
    OK(test(&c) == ENOENT, "DESTROY_ACCESS_PAGES again = ENOENT");

    /* TRIGGER_IOPF into a fault queue, read and answered through the fault fd. */
    struct iommu_fault_alloc fa = { sizeof(fa), 0, 0, 0 };
    OK(ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fa) == 0, "FAULT_QUEUE_ALLOC");
    int ffd = open_returned();
    OK(ffd >= 0, "open the fault node");
    struct iommu_hwpt_alloc ha = { sizeof(ha), IOMMU_HWPT_ALLOC_FAULT_ID_VALID, idev, ioas, 0, 0,
                                   0, 0, 0, fa.out_fault_id, 0 };
    OK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &ha) == 0, "HWPT_ALLOC with the fault queue");
    c = cmd(IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev);
    c.mock_domain_replace.pt_id = ha.out_hwpt_id;
    OK(test(&c) == 0 && c.mock_domain_replace.pt_id == ha.out_hwpt_id, "MOCK_DOMAIN_REPLACE");
    OK(destroy(hwpt) == ENOENT, "the old auto HWPT is gone");
    c = cmd(IOMMU_TEST_OP_TRIGGER_IOPF, 0);
    c.trigger_iopf.dev_id = idev;
    c.trigger_iopf.grpid = 2;
    c.trigger_iopf.perm = 3;
    c.trigger_iopf.addr = 0xdeadbeaf;
    OK(test(&c) == 0, "TRIGGER_IOPF");
    struct iommu_hwpt_pgfault f;
    OK(read(ffd, &f, sizeof(f)) == sizeof(f), "read one fault record");
    OK(f.flags == IOMMU_PGFAULT_FLAGS_LAST_PAGE && f.dev_id == idev && f.grpid == 2 && f.perm == 3
       && f.addr == 0xdeadbeaf && f.cookie == 1, "the record: LAST_PAGE, device, grpid, perm, addr, cookie 1");
    struct iommu_hwpt_page_response resp = { f.cookie, 0 };
    OK(write(ffd, &resp, sizeof(resp)) == sizeof(resp), "page response accepted");
    OK(write(ffd, &resp, sizeof(resp)) < 0 && errno == EINVAL, "answered once");

    /* PASIDs on a PASID-capable mock device. */
    c = cmd(IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, ioas);
    c.mock_domain_flags.dev_flags = MOCK_FLAGS_DEVICE_PASID;
    OK(test(&c) == 0, "MOCK_DOMAIN_FLAGS(PASID)");
    uint32_t stdev2 = c.mock_domain_flags.out_stdev_id, idev2 = c.mock_domain_flags.out_idev_id;
    struct iommu_hwpt_alloc pa = { sizeof(pa), IOMMU_HWPT_ALLOC_PASID, idev2, ioas, 0, 0, 0, 0, 0,
                                   0, 0 };
    OK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &pa) == 0, "HWPT_ALLOC(PASID)");
    c = cmd(IOMMU_TEST_OP_PASID_ATTACH, stdev2);
    c.pasid_attach.pasid = 7;
    c.pasid_attach.pt_id = pa.out_hwpt_id;
    OK(test(&c) == EINVAL, "PASID_ATTACH while the RID is on an auto domain = EINVAL");
    c = cmd(IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev2);
    c.mock_domain_replace.pt_id = pa.out_hwpt_id;
    OK(test(&c) == 0, "RID onto the PASID-compatible HWPT");
    c = cmd(IOMMU_TEST_OP_PASID_ATTACH, stdev2);
    c.pasid_attach.pasid = 7;
    c.pasid_attach.pt_id = pa.out_hwpt_id;
    OK(test(&c) == 0 && c.pasid_attach.pt_id == pa.out_hwpt_id, "PASID_ATTACH 7");
    OK(test(&c) == EBUSY, "PASID_ATTACH 7 again = EBUSY");
    c = cmd(IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev2);
    c.pasid_check.pasid = 7;
    c.pasid_check.hwpt_id = pa.out_hwpt_id;
    OK(test(&c) == 0, "PASID_CHECK_HWPT 7");
    c.pasid_check.hwpt_id = 0;
    OK(test(&c) == EINVAL, "PASID_CHECK_HWPT 7 detached? = EINVAL");
    c = cmd(IOMMU_TEST_OP_PASID_DETACH, stdev2);
    c.pasid_detach.pasid = 7;
    OK(test(&c) == 0, "PASID_DETACH 7");
    c = cmd(IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev2);
    c.pasid_check.pasid = 7;
    OK(test(&c) == 0, "PASID 7 is detached");

    /* Closing the access fd destroys the access; unmapping drops the domain's pins. */
    OK(ioctl(afd, IOMMUFS_SYNC_CLOSE, 0) == 0 && close(afd) == 0, "close the access fd");
    OK(destroy(access_id) == ENOENT, "the ACCESS object is gone");
    struct iommu_ioas_unmap u = { sizeof(u), ioas, iova, len };
    OK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == len, "IOAS_UNMAP");
    OK(check_refs(buf, len, 0) == 0, "MD_CHECK_REFS = 0 after unmap");

    OK(destroy(stdev) == 0 && destroy(stdev2) == 0, "DESTROY both stdevs");
    OK(destroy(idev) == ENOENT && destroy(idev2) == ENOENT, "their devices are unbound");
    OK(destroy(ha.out_hwpt_id) == 0 && destroy(pa.out_hwpt_id) == 0, "the HWPTs are free");
    c = cmd(IOMMU_TEST_OP_MD_CHECK_IOTLB, ioas);
    OK(test(&c) == EOPNOTSUPP, "an op not emulated = EOPNOTSUPP");
    close(ffd);
    OK(ioctl(iommufd, IOMMUFS_SYNC_CLOSE, 0) == 0 && close(iommufd) == 0, "close the iommufd");
    printf("checks %d\n", checks);
    return 0;
}
