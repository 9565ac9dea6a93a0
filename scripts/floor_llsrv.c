/* The C floors of scripts/bench_transport.py (IOAS_MAP) and
 * scripts/bench_fault.py (the I/O page fault round trip): a libfuse3
 * low-level server that does the FUSE requests, the copies from and to the
 * caller and the poll notification iommufs does for those calls, and
 * nothing of the uAPI's rules. What the benchmarks measure against it is
 * the cost of iommufs's own work. Not product code.
 *
 *   gcc -O2 -Wall -I tests/c -o floor_llsrv floor_llsrv.c $(pkg-config --cflags --libs fuse3)
 *   ./floor_llsrv MOUNTPOINT            # foreground; SIGINT/SIGTERM unmount
 *
 * Nodes, named as the built-in topology's PRI device has them:
 *   /iommu                         IOMMUFS_NULL; IOAS_ALLOC, IOAS_MAP, IOAS_UNMAP,
 *                                  OPTION, FAULT_QUEUE_ALLOC, HWPT_ALLOC,
 *                                  IOMMUFS_FD_PATH: copy the struct in, fill
 *                                  the out fields, copy it back (the kernel's
 *                                  write-back); IOAS_MAP remembers IOVA -> VA
 *   /vfio/devices/vfio1            BIND and ATTACH, the same way
 *   /devices/0000:00:04.0/dma      an IODM write to an unmapped IOVA raises a
 *                                  fault record and waits; the read of its
 *                                  reply is answered when the response comes
 *   /fds/fault-1                   read: the waiting records; write: page
 *                                  responses (the DMA then moves its bytes
 *                                  into the mapper's memory and its parked
 *                                  read is answered); poll with notification
 * Single-threaded (libfuse's loop): nothing is locked.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "uapi.h"

enum { ROOT = 1, IOMMU, VFIO_DIR, VFIO_DEVS, VFIO1, DEVICES, DEV_DIR, DMA, FDS, FAULT, NINO };

static const struct { fuse_ino_t parent; const char *name; int dir; } nodes[NINO] = {
    [IOMMU] = {ROOT, "iommu", 0},          [VFIO_DIR] = {ROOT, "vfio", 1},
    [VFIO_DEVS] = {VFIO_DIR, "devices", 1}, [VFIO1] = {VFIO_DEVS, "vfio1", 0},
    [DEVICES] = {ROOT, "devices", 1},      [DEV_DIR] = {DEVICES, "0000:00:04.0", 1},
    [DMA] = {DEV_DIR, "dma", 0},           [FDS] = {ROOT, "fds", 1},
    [FAULT] = {FDS, "fault-1", 0},
};

/* IOAS_MAP's IOVA -> (mapper, VA), open addressing keyed by the page. */
#define MAPS (1 << 16)
static struct { uint64_t iova; uint64_t va; pid_t pid; } maps[MAPS];

static const uint64_t *find_va(uint64_t iova, pid_t *pid)
{
    for (uint32_t h = (uint32_t)(iova >> 12) & (MAPS - 1);; h = (h + 1) & (MAPS - 1)) {
        if (maps[h].iova == iova + 1) {
            *pid = maps[h].pid;
            return &maps[h].va;
        }
        if (!maps[h].iova)
            return NULL;
    }
}

static void add_map(uint64_t iova, uint64_t va, pid_t pid)
{
    uint32_t h = (uint32_t)(iova >> 12) & (MAPS - 1);
    while (maps[h].iova && maps[h].iova != iova + 1)
        h = (h + 1) & (MAPS - 1);
    maps[h].iova = iova + 1;       /* 0 marks a free slot */
    maps[h].va = va;
    maps[h].pid = pid;
}

/* One DMA waiting for its page response, and the read parked on its reply. */
static struct {
    int waiting, answered;
    uint64_t iova;
    uint32_t len;
    char data[64];
    struct iommufs_dma_reply reply;
    fuse_req_t parked;
    size_t parked_size;
} dma;
static struct iommu_hwpt_pgfault pending;
static int have_pending;
static uint32_t next_cookie = 1;
static struct fuse_pollhandle *fault_ph;

static int copy_in(fuse_req_t req, void *arg, void *buf, size_t n)
{
    struct iovec l = {buf, n}, r = {arg, n};
    return process_vm_readv(fuse_req_ctx(req)->pid, &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}

static int copy_out(fuse_req_t req, void *arg, const void *buf, size_t n)
{
    struct iovec l = {(void *)buf, n}, r = {arg, n};
    return process_vm_writev(fuse_req_ctx(req)->pid, &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}

static void fill(fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    int dir = ino == ROOT || nodes[ino].dir;
    st->st_mode = dir ? (S_IFDIR | 0755) : (S_IFREG | 0666);
    st->st_nlink = dir ? 2 : 1;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    for (fuse_ino_t i = IOMMU; i < NINO; i++)
        if (nodes[i].parent == parent && strcmp(nodes[i].name, name) == 0) {
            struct fuse_entry_param e;
            memset(&e, 0, sizeof(e));
            e.ino = i;
            e.attr_timeout = e.entry_timeout = 3600.0;
            fill(i, &e.attr);
            fuse_reply_entry(req, &e);
            return;
        }
    fuse_reply_err(req, ENOENT);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;
    (void)fi;
    if (ino < ROOT || ino >= NINO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill(ino, &st);
    fuse_reply_attr(req, &st, 3600.0);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino == ROOT || nodes[ino].dir) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    fi->direct_io = 1;
    fi->nonseekable = 1;
    fuse_reply_open(req, fi);
}

/* Copy the struct in (its size word first, as the kernel does), let
 * ``out`` fill it, copy min(size, sizeof) back. */
#define STRUCT_CALL(type, body)                                       \
    do {                                                              \
        type s_;                                                      \
        uint32_t sz_;                                                 \
        memset(&s_, 0, sizeof(s_));                                   \
        if (copy_in(req, arg, &sz_, 4)) { err = EFAULT; break; }      \
        size_t n_ = sz_ < sizeof(s_) ? sz_ : sizeof(s_);              \
        if (copy_in(req, arg, &s_, n_)) { err = EFAULT; break; }      \
        body;                                                         \
        if (copy_out(req, arg, &s_, n_)) { err = EFAULT; break; }     \
    } while (0)

static void ll_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
                     struct fuse_file_info *fi, unsigned flags, const void *in_buf,
                     size_t in_bufsz, size_t out_bufsz)
{
    (void)fi; (void)flags; (void)in_buf; (void)in_bufsz; (void)out_bufsz;
    int err = 0;
    if (cmd == IOMMUFS_NULL) {
        fuse_reply_ioctl(req, 0, NULL, 0);
        return;
    }
    if (ino == IOMMU) {
        switch (cmd) {
        case IOMMU_IOAS_ALLOC:
            STRUCT_CALL(struct iommu_ioas_alloc, s_.out_ioas_id = 1);
            break;
        case IOMMU_IOAS_MAP:
            STRUCT_CALL(struct iommu_ioas_map, add_map(s_.iova, s_.user_va, fuse_req_ctx(req)->pid));
            break;
        case IOMMU_IOAS_UNMAP:
            STRUCT_CALL(struct iommu_ioas_unmap, memset(maps, 0, sizeof(maps)));
            break;
        case IOMMU_OPTION:
            STRUCT_CALL(struct iommu_option, s_.val64 = 1);
            break;
        case IOMMU_FAULT_QUEUE_ALLOC:
            STRUCT_CALL(struct iommu_fault_alloc, { s_.out_fault_id = 2; s_.out_fault_fd = -1; });
            break;
        case IOMMU_HWPT_ALLOC:
            STRUCT_CALL(struct iommu_hwpt_alloc, s_.out_hwpt_id = 3);
            break;
        case IOMMUFS_FD_PATH:
            STRUCT_CALL(struct iommufs_fd_path, strcpy(s_.path, "fds/fault-1"));
            break;
        default:
            err = ENOTTY;
        }
    } else if (ino == VFIO1) {
        if (cmd == VFIO_DEVICE_BIND_IOMMUFD)
            STRUCT_CALL(struct vfio_device_bind_iommufd, s_.out_devid = 4);
        else if (cmd == VFIO_DEVICE_ATTACH_IOMMUFD_PT)
            STRUCT_CALL(struct vfio_device_attach_iommufd_pt, (void)0);
        else
            err = ENOTTY;
    } else {
        err = ENOTTY;
    }
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_ioctl(req, 0, NULL, 0);
}

/* The DMA moves its bytes into the mapper's memory: done, or still no page. */
static int dma_try(void)
{
    pid_t pid;
    const uint64_t *va = find_va(dma.iova & ~4095ull, &pid);
    memcpy(dma.reply.magic, "IODM", 4);
    if (!va)
        return -EFAULT;
    struct iovec l = {dma.data, dma.len}, r = {(void *)(uintptr_t)(*va + (dma.iova & 4095)), dma.len};
    if (process_vm_writev(pid, &l, 1, &r, 1, 0) != (ssize_t)dma.len)
        return -EFAULT;
    dma.reply.status = 0;
    dma.reply.moved = dma.len;
    return 0;
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)off; (void)fi;
    if (ino == DMA) {
        const struct iommufs_dma_request *rq = (const void *)buf;
        if (size < sizeof(*rq) || rq->length > sizeof(dma.data) || dma.waiting) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        memset(&dma.reply, 0, sizeof(dma.reply));
        dma.iova = rq->iova;
        dma.len = rq->length;
        memcpy(dma.data, rq->data, rq->length);
        dma.answered = dma_try() == 0;
        if (!dma.answered) {            /* a page request: record it, wake the handler */
            dma.waiting = 1;
            memset(&pending, 0, sizeof(pending));
            pending.flags = IOMMU_PGFAULT_FLAGS_LAST_PAGE;
            pending.perm = IOMMU_PGFAULT_PERM_WRITE;
            pending.addr = rq->iova & ~4095ull;
            pending.cookie = next_cookie++;
            have_pending = 1;
            if (fault_ph)
                fuse_lowlevel_notify_poll(fault_ph);
        }
        fuse_reply_write(req, size);
    } else if (ino == FAULT) {
        const struct iommu_hwpt_page_response *r = (const void *)buf;
        if (size != sizeof(*r) || !dma.waiting) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        if (dma_try() != 0) {
            dma.reply.status = -EFAULT;
            dma.reply.fault_iova = dma.iova;
        }
        dma.waiting = 0;
        dma.answered = 1;
        fuse_reply_write(req, size);
        if (dma.parked) {
            fuse_reply_buf(dma.parked, (const char *)&dma.reply, sizeof(dma.reply));
            dma.parked = NULL;
            dma.answered = 0;
        }
    } else {
        fuse_reply_err(req, EINVAL);
    }
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)off; (void)fi;
    if (ino == DMA) {
        if (dma.waiting) {              /* answered by the page response */
            dma.parked = req;
            dma.parked_size = size;
        } else if (dma.answered) {
            dma.answered = 0;
            fuse_reply_buf(req, (const char *)&dma.reply, sizeof(dma.reply));
        } else {
            fuse_reply_err(req, ENOMSG);
        }
    } else if (ino == FAULT) {
        if (have_pending && size >= sizeof(pending)) {
            have_pending = 0;
            fuse_reply_buf(req, (const char *)&pending, sizeof(pending));
        } else {
            fuse_reply_buf(req, NULL, 0);
        }
    } else {
        fuse_reply_err(req, EINVAL);
    }
}

static void ll_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                    struct fuse_pollhandle *ph)
{
    (void)fi;
    if (ino == FAULT && ph) {
        if (fault_ph)
            fuse_pollhandle_destroy(fault_ph);
        fault_ph = ph;
    } else if (ph) {
        fuse_pollhandle_destroy(ph);
    }
    unsigned ev = POLLOUT | POLLWRNORM;
    if (ino == FAULT && have_pending)
        ev |= POLLIN | POLLRDNORM;
    fuse_reply_poll(req, ev);
}

static const struct fuse_lowlevel_ops ops = {
    .lookup = ll_lookup,
    .getattr = ll_getattr,
    .open = ll_open,
    .read = ll_read,
    .write = ll_write,
    .ioctl = ll_ioctl,
    .poll = ll_poll,
};

int main(int argc, char **argv)
{
    char *fargv[] = {argv[0], "-o",
                     "allow_other,default_permissions,auto_unmount,fsname=floorsrv,subtype=floorsrv",
                     NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se;
    int rc = 1;

    if (argc != 2) {
        fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
        return 2;
    }
    se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
    if (!se)
        return 1;
    if (fuse_set_signal_handlers(se) == 0) {
        if (fuse_session_mount(se, argv[1]) == 0) {
            rc = fuse_session_loop(se) ? 1 : 0;
            fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
    return rc;
}
