/* Client-memory access for iommufs: process_vm_readv/writev in batches, and
 * the pidfd system calls. Every function returns >= 0 or -errno. */
#ifndef IOFS_PROCMEM_H
#define IOFS_PROCMEM_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/* One contiguous piece of a remote (client) address range. */
struct iofs_seg {
    uint64_t addr;   /* address in the remote process */
    uint64_t len;    /* bytes */
};

/* Copy len bytes between local and remote memory of pid (a tid is fine: the
 * kernel resolves it to its mm). Returns bytes moved (== len) or -errno;
 * a short transfer is reported as -EFAULT. */
int64_t iofs_vm_read(int pid, uint64_t remote, void *local, uint64_t len);
int64_t iofs_vm_write(int pid, uint64_t remote, const void *local, uint64_t len);

/* Read up to len (< 60 KiB) bytes: returns how many leading bytes were
 * readable (possibly 0 if the first page faults: then -EFAULT). */
int64_t iofs_vm_read_upto(int pid, uint64_t remote, void *local, uint64_t len);

/* Scatter/gather: the remote side is nsegs segments, the local side one
 * buffer of their total length. write != 0 moves local -> remote. Returns
 * bytes moved before the first failure, or -errno if nothing moved. */
int64_t iofs_vm_rw_segs(int pid, const struct iofs_seg *segs, size_t nsegs,
                        void *local, int write);

/* Probe that [remote, remote+len) is readable in pid, one byte per page
 * (page = page_size bytes). Returns 0 or -EFAULT. */
int iofs_vm_probe(int pid, uint64_t remote, uint64_t len, uint64_t page_size);

int iofs_pidfd_open(int pid, unsigned int flags);
int iofs_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
/* 0 if thread tid belongs to process tgid now, else -ESRCH (tgkill with signal 0). */
int iofs_tgkill0(int tgid, int tid);
/* 1 if the process behind pidfd has exited, 0 if alive, -errno on error. */
int iofs_pidfd_exited(int pidfd);
/* 0 if every byte of [addr, addr+len) lies in VMAs that are readable (and
 * writable when write != 0), asked through PROCMAP_QUERY on an open
 * /proc/<pid>/maps; -EFAULT if not; -ENOTTY on kernels without the ioctl;
 * -ESRCH once the process is gone. */
int iofs_vma_check(int maps_fd, uint64_t addr, uint64_t len, int write);
struct iofs_vma {
    uint64_t start, end;   /* [start, end) */
    uint64_t flags;        /* PROCMAP_QUERY_VMA_*: 1 read, 2 write, 4 exec, 8 shared */
    uint64_t offset;       /* file offset of start */
    uint64_t inode;        /* 0 for anonymous memory */
};
/* The VMA that covers addr, asked through PROCMAP_QUERY on an open
 * /proc/<pid>/maps: 0 and *out filled; -ENOENT none covers it; -ENOTTY a
 * kernel without the ioctl; -ESRCH the process is gone. */
int iofs_vma_query(int maps_fd, uint64_t addr, struct iofs_vma *out);
/* The pin-time check of IOMMU_IOAS_MAP (reference §7, Pinning) in one call:
 * the process behind pidfd (pid its pid, maps_fd its /proc/<pid>/maps or -1)
 * has not exited; every page of [addr, addr+len) is readable (probed with
 * process_vm_readv, which faults the pages in as pinning does); with
 * write != 0, every byte lies in writable VMAs (PROCMAP_QUERY on maps_fd).
 * Returns 0; -ESRCH the process has exited (also pidfd < 0); -EFAULT not
 * readable or not writable; -ENOTTY readable, but writability cannot be
 * asked here (maps_fd < 0 or a kernel without PROCMAP_QUERY): the caller
 * checks it another way. */
int iofs_pin_check(int pidfd, int pid, int maps_fd, uint64_t addr, uint64_t len, int write);
#endif
