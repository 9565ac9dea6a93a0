/* Helpers of the run_* test programs (tests/test_run.py): failing with a
 * message, and the emulated device's DMA engine (README, "Device DMA"),
 * which stands in for the device. The uAPI itself is uapi.h. */
#ifndef IOMMUFS_TEST_UTIL_H
#define IOMMUFS_TEST_UTIL_H
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uapi.h"

static inline void fail(const char *what, long got, long want)
{
    printf("FAIL %s: got %ld want %ld\n", what, got, want);
    fflush(stdout);
    exit(1);
}

/* A call returned r: -1 with errno e expected; prints "ok WHAT". */
static inline void expect_err(const char *what, int r, int e)
{
    if (r != -1 || errno != e)
        fail(what, r == -1 ? -errno : r, -e);
    printf("ok %s\n", what);
}

/* A call returned r: 0 expected; prints "ok WHAT". */
static inline void expect_ok(const char *what, int r)
{
    if (r != 0)
        fail(what, -errno, 0);
    printf("ok %s\n", what);
}

/* ioctl() returned r: 0 expected. */
static inline void check_ok(const char *what, int r)
{
    if (r != 0)
        fail(what, -errno, 0);
}

/* One device DMA frame on a dma node (op IOMMUFS_DMA_OP_READ or _WRITE);
 * the reply's status. */
static inline int device_dma(int fd, uint32_t op, uint64_t iova, void *data, uint32_t len)
{
    static unsigned char buf[sizeof(struct iommufs_dma_request) + 65536];
    struct iommufs_dma_request req = { {'I', 'O', 'D', 'M'}, op, 0, 0, iova, len, 0 };
    if (len > 65536)
        fail("dma length", len, 65536);
    memcpy(buf, &req, sizeof(req));
    size_t n = sizeof(req);
    if (op == IOMMUFS_DMA_OP_WRITE) {
        memcpy(buf + sizeof(req), data, len);
        n += len;
    }
    if (write(fd, buf, n) != (ssize_t)n)
        fail("dma write()", -errno, 0);
    ssize_t r = read(fd, buf, sizeof(buf));
    struct iommufs_dma_reply rep;
    if (r < (ssize_t)sizeof(rep) || memcmp(buf, "IODM", 4))
        fail("dma reply", r, sizeof(rep));
    memcpy(&rep, buf, sizeof(rep));
    if (op == IOMMUFS_DMA_OP_READ && rep.status == 0)
        memcpy(data, buf + sizeof(rep), len);
    return rep.status;
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
