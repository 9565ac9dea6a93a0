/* close() of the fds an ioctl returned, as an unmodified program relies on
 * it: the kernel releases a fault fd or an access fd synchronously, so
 * IOMMU_DESTROY of the FAULT object right after closing its fault fd
 * succeeds, and MD_CHECK_REFS right after closing an access fd counts no
 * pin of it. Under iommufs run the preload shim sends the synchronous close
 * on the last reference; a dup keeps the file open, as in the kernel.
 *
 *   run_close */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "util.h"

#define IOVA 0x100000ull
#define LEN 65536u

static int iommufd;

static int destroy(uint32_t id)
{
    struct iommu_destroy d = { sizeof(d), id };
    return ioctl(iommufd, IOMMU_DESTROY, &d) == 0 ? 0 : -errno;
}

static struct iommu_fault_alloc fault_alloc(void)
{
    struct iommu_fault_alloc fa = { sizeof(fa), 0, 0, 0 };
    check_ok("FAULT_QUEUE_ALLOC", ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
    if ((int32_t)fa.out_fault_fd < 0)
        fail("out_fault_fd is an fd", (int32_t)fa.out_fault_fd, 0);
    return fa;
}

static int check_refs(void *buf, uint64_t len, uint32_t refs)
{
    struct iommu_test_cmd c;
    memset(&c, 0, sizeof(c));
    c.size = sizeof(c);
    c.op = IOMMU_TEST_OP_MD_CHECK_REFS;
    c.check_refs.uptr = (uintptr_t)buf;
    c.check_refs.length = len;
    c.check_refs.refs = refs;
    return ioctl(iommufd, IOMMU_TEST_CMD, &c) == 0 ? 0 : -errno;
}

int main(void)
{
    iommufd = open("/dev/iommu", O_RDWR);
    if (iommufd < 0)
        fail("open /dev/iommu", -errno, 0);

    /* A fault fd: close, then destroy its FAULT object at once. */
    struct iommu_fault_alloc fa = fault_alloc();
    int r = destroy(fa.out_fault_id);
    if (r != -EBUSY)
        fail("DESTROY of a fault with its fd open -> EBUSY", r, -EBUSY);
    close((int32_t)fa.out_fault_fd);
    r = destroy(fa.out_fault_id);
    if (r != 0)
        fail("DESTROY right after close(fault fd)", r, 0);
    printf("ok DESTROY right after close of the fault fd\n");

    /* A dup keeps the open file, hence the object; its close releases it. */
    fa = fault_alloc();
    int second = dup((int32_t)fa.out_fault_fd);
    close((int32_t)fa.out_fault_fd);
    r = destroy(fa.out_fault_id);
    if (r != -EBUSY)
        fail("DESTROY while a dup of the fault fd is open -> EBUSY", r, -EBUSY);
    close(second);
    r = destroy(fa.out_fault_id);
    if (r != 0)
        fail("DESTROY right after close of the last dup", r, 0);
    printf("ok a dup keeps the fault fd; its close releases it\n");

    /* An access fd pinning our memory: close, then no pin is left. */
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    check_ok("IOAS_ALLOC", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
    unsigned char *buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 1, LEN);
    struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                                | IOMMU_IOAS_MAP_WRITEABLE, al.out_ioas_id, 0, (uintptr_t)buf, LEN,
                                IOVA };
    check_ok("MAP", ioctl(iommufd, IOMMU_IOAS_MAP, &m));
    struct iommu_test_cmd c;
    memset(&c, 0, sizeof(c));
    c.size = sizeof(c);
    c.op = IOMMU_TEST_OP_CREATE_ACCESS;
    c.id = al.out_ioas_id;
    c.create_access.flags = MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES;
    check_ok("CREATE_ACCESS", ioctl(iommufd, IOMMU_TEST_CMD, &c));
    int afd = (int32_t)c.create_access.out_access_fd;
    if (afd < 0 || fcntl(afd, F_GETFD) != FD_CLOEXEC)
        fail("out_access_fd is an O_CLOEXEC fd", afd, 0);
    memset(&c, 0, sizeof(c));
    c.size = sizeof(c);
    c.op = IOMMU_TEST_OP_ACCESS_PAGES;
    c.id = afd;
    c.access_pages.iova = IOVA;
    c.access_pages.length = LEN;
    c.access_pages.uptr = (uintptr_t)buf;
    check_ok("ACCESS_PAGES", ioctl(iommufd, IOMMU_TEST_CMD, &c));
    r = check_refs(buf, LEN, 1);
    if (r != 0)
        fail("MD_CHECK_REFS 1 while the access pins", r, 0);
    close(afd);
    r = check_refs(buf, LEN, 0);
    if (r != 0)
        fail("MD_CHECK_REFS 0 right after close(access fd)", r, 0);
    printf("ok no pin left right after close of the access fd\n");

    close(iommufd);
    printf("done\n");
    return 0;
}
