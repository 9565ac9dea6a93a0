#define _GNU_SOURCE
#include "procmem.h"
#include <errno.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* The kernel caps one process_vm_* call at IOV_MAX iovecs per side. */
#define IOFS_IOV_BATCH 1024

/* No user address space reaches past 2^57 (x86-64 5-level paging; arm64 tops
 * out at 2^52): a range ending above it is EFAULT before any arithmetic on
 * it, as the kernel's access_ok() refuses it before touching memory. */
#define IOFS_USER_END (1ull << 57)

/* 1 if [addr, addr + len) is a range a process could map: no wrap past
 * 2^64 and below IOFS_USER_END. Every page-stepping loop below relies on
 * this, since stepping to the next page of the last page wraps to 0. */
static int range_ok(uint64_t addr, uint64_t len)
{
    return addr < IOFS_USER_END && len <= IOFS_USER_END - addr;
}

int64_t iofs_vm_read(int pid, uint64_t remote, void *local, uint64_t len)
{
    struct iovec l = { local, len }, r = { (void *)(uintptr_t)remote, len };
    if (len == 0)
        return 0;
    if (!range_ok(remote, len))
        return -EFAULT;
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n < 0)
        return -errno;
    return (uint64_t)n == len ? n : -EFAULT;
}

int64_t iofs_vm_write(int pid, uint64_t remote, const void *local, uint64_t len)
{
    struct iovec l = { (void *)local, len }, r = { (void *)(uintptr_t)remote, len };
    if (len == 0)
        return 0;
    if (!range_ok(remote, len))
        return -EFAULT;
    ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
    if (n < 0)
        return -errno;
    return (uint64_t)n == len ? n : -EFAULT;
}

int64_t iofs_vm_rw_segs(int pid, const struct iofs_seg *segs, size_t nsegs,
                        void *local, int write)
{
    struct iovec r[IOFS_IOV_BATCH];
    char *p = local;
    int64_t done = 0;
    size_t i = 0;

    while (i < nsegs) {
        size_t k = 0;
        uint64_t want = 0;
        for (; k < IOFS_IOV_BATCH && i + k < nsegs; k++) {
            const struct iofs_seg *sg = &segs[i + k];
            /* want stays below 2^57 * 1024: no overflow of the sum. */
            if (!range_ok(sg->addr, sg->len))
                return done ? done : -EFAULT;
            r[k].iov_base = (void *)(uintptr_t)sg->addr;
            r[k].iov_len = sg->len;
            want += sg->len;
        }
        struct iovec l = { p, want };
        ssize_t n = write ? process_vm_writev(pid, &l, 1, r, k, 0)
                          : process_vm_readv(pid, &l, 1, r, k, 0);
        if (n < 0)
            return done ? done : -errno;
        done += n;
        if ((uint64_t)n != want)
            return done ? done : -EFAULT;
        p += want;
        i += k;
    }
    return done;
}

int iofs_vm_probe(int pid, uint64_t remote, uint64_t len, uint64_t page_size)
{
    struct iovec r[IOFS_IOV_BATCH];
    char sink[IOFS_IOV_BATCH];
    uint64_t end = remote + len, a = remote;

    if (len == 0)
        return 0;
    if (!range_ok(remote, len) || page_size == 0 || (page_size & (page_size - 1)))
        return -EFAULT;
    while (a < end) {
        size_t k = 0;
        for (; k < IOFS_IOV_BATCH && a < end; k++) {
            r[k].iov_base = (void *)(uintptr_t)a;
            r[k].iov_len = 1;
            a = (a & ~(page_size - 1)) + page_size;
        }
        struct iovec l = { sink, k };
        ssize_t n = process_vm_readv(pid, &l, 1, r, k, 0);
        if (n < 0)
            return errno == ESRCH ? -ESRCH : -EFAULT;
        if ((size_t)n != k)
            return -EFAULT;
    }
    return 0;
}

int iofs_pidfd_open(int pid, unsigned int flags)
{
    long fd = syscall(SYS_pidfd_open, pid, flags);
    return fd < 0 ? -errno : (int)fd;
}

int iofs_pidfd_getfd(int pidfd, int targetfd, unsigned int flags)
{
    long fd = syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
    return fd < 0 ? -errno : (int)fd;
}

int iofs_pidfd_exited(int pidfd)
{
    struct pollfd p = { .fd = pidfd, .events = POLLIN };
    int n = poll(&p, 1, 0);
    if (n < 0)
        return -errno;
    return n > 0 ? 1 : 0;
}

int iofs_tgkill0(int tgid, int tid)
{
    /* Signal 0 sends nothing: it only checks that tid is a thread of tgid. */
    return syscall(SYS_tgkill, tgid, tid, 0) < 0 ? -errno : 0;
}

/* PROCMAP_QUERY (Linux 6.11+): ask /proc/<pid>/maps for the VMA covering an
 * address with one ioctl instead of generating and parsing the whole text. */
struct iofs_procmap_query {
    uint64_t size, query_flags, query_addr;
    uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
#define IOFS_PROCMAP_QUERY _IOWR('f', 17, struct iofs_procmap_query)
#define IOFS_VMA_READABLE 0x01
#define IOFS_VMA_WRITABLE 0x02

int iofs_vma_check(int maps_fd, uint64_t addr, uint64_t len, int write)
{
    uint64_t end = addr + len, need = addr;
    uint64_t want = IOFS_VMA_READABLE | (write ? IOFS_VMA_WRITABLE : 0);

    if (len && !range_ok(addr, len))
        return -EFAULT;
    while (need < end) {
        struct iofs_procmap_query q = { .size = sizeof(q), .query_addr = need };
        if (ioctl(maps_fd, IOFS_PROCMAP_QUERY, &q) < 0)
            return errno == ENOENT ? -EFAULT : -errno;
        /* A VMA that does not move us forward would loop forever. */
        if (q.vma_start > need || q.vma_end <= need || (q.vma_flags & want) != want)
            return -EFAULT;
        need = q.vma_end;
    }
    return 0;
}

int iofs_vma_query(int maps_fd, uint64_t addr, struct iofs_vma *out)
{
    struct iofs_procmap_query q = { .size = sizeof(q), .query_addr = addr };
    if (ioctl(maps_fd, IOFS_PROCMAP_QUERY, &q) < 0)
        return -errno;
    if (q.vma_start > addr)
        return -ENOENT;
    out->start = q.vma_start;
    out->end = q.vma_end;
    out->flags = q.vma_flags;
    out->offset = q.vma_offset;
    out->inode = q.inode;
    return 0;
}

int iofs_pin_check(int pidfd, int pid, int maps_fd, uint64_t addr, uint64_t len, int write)
{
    if (pidfd < 0 || iofs_pidfd_exited(pidfd) != 0)
        return -ESRCH;
    if (len == 0)
        return 0;
    int r = iofs_vm_probe(pid, addr, len, 4096);
    if (r < 0)
        return r == -ESRCH ? -ESRCH : -EFAULT;
    if (!write)
        return 0;
    if (maps_fd < 0)
        return -ENOTTY;
    r = iofs_vma_check(maps_fd, addr, len, 1);
    /* The maps fd stays bound to the process it was opened for. */
    return r == -ENOTTY || r == -ESRCH ? r : (r < 0 ? -EFAULT : 0);
}

int64_t iofs_vm_read_upto(int pid, uint64_t remote, void *local, uint64_t len)
{
    /* One remote iovec per page: the kernel stops at the first element it
     * cannot read and reports what came before it, so a short count tells
     * exactly how far the caller's memory is readable. */
    struct iovec r[16];
    size_t k = 0;
    uint64_t a = remote, end = remote + len;

    if (len == 0)
        return 0;
    if (len > 16 * 4096 - 4096)
        return -EINVAL;
    /* Nothing is readable up there; stepping pages from the last one would
     * wrap to 0 and overrun r[] (issue 8: a pointer at 0xfffffffffffff000). */
    if (!range_ok(remote, len))
        return -EFAULT;
    while (a < end) {
        uint64_t next = (a & ~4095ull) + 4096;
        if (next > end)
            next = end;
        r[k].iov_base = (void *)(uintptr_t)a;
        r[k].iov_len = next - a;
        k++;
        a = next;
    }
    struct iovec l = { local, len };
    ssize_t n = process_vm_readv(pid, &l, 1, r, k, 0);
    return n < 0 ? -errno : n;
}
