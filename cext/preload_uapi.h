/* The uAPI the preload shim (preload.c) reads and writes: the ioctls that
 * return an fd and the structs that carry it (reference §2, §5, §12), and
 * iommufs's private ioctls (docs/nodes.md, "Private ioctls"). Written from the
 * reference, with the uAPI's own names; the shim takes every offset from
 * these declarations (offsetof), and tests/test_layout.py holds them
 * against the reference's tables. */
#ifndef IOMMUFS_PRELOAD_UAPI_H
#define IOMMUFS_PRELOAD_UAPI_H
#include <linux/types.h>

/* §1: _IO(';', nr). */
#define IOMMUFD_TYPE 0x3b
#define IOMMUFD_IO(nr) ((IOMMUFD_TYPE << 8) | (nr))

#define IOMMU_DESTROY IOMMUFD_IO(0x80)
#define IOMMU_FAULT_QUEUE_ALLOC IOMMUFD_IO(0x8e)
#define IOMMU_VEVENTQ_ALLOC IOMMUFD_IO(0x93)
#define IOMMU_TEST_CMD IOMMUFD_IO(0x80 + 32)

#define IOMMU_TEST_OP_CREATE_ACCESS 5
#define IOMMU_TEST_OP_DMABUF_GET 22

struct iommu_destroy {
    __u32 size;
    __u32 id;
};

struct iommu_fault_alloc {
    __u32 size;
    __u32 flags;
    __u32 out_fault_id;
    __u32 out_fault_fd;
};

struct iommu_veventq_alloc {
    __u32 size;
    __u32 flags;
    __u32 viommu_id;
    __u32 type;
    __u32 veventq_depth;
    __u32 out_veventq_id;
    __u32 out_veventq_fd;
    __u32 __reserved;
};

/* §12: the op's fields are a member of the union at 16. */
struct iommu_test_cmd {
    __u32 size;
    __u32 op;
    __u32 id;
    __u32 __reserved;
    union {
        struct {
            __aligned_u64 start;
            __aligned_u64 length;
        } add_reserved;
        struct {
            __u32 out_stdev_id;
            __u32 out_hwpt_id;
            __u32 out_idev_id;
        } mock_domain;
        struct {
            __u32 out_stdev_id;
            __u32 out_hwpt_id;
            __u32 out_idev_id;
            __u32 dev_flags;
        } mock_domain_flags;
        struct {
            __u32 pt_id;
        } mock_domain_replace;
        struct {
            __aligned_u64 iova;
            __aligned_u64 length;
            __aligned_u64 uptr;
        } check_map;
        struct {
            __aligned_u64 length;
            __aligned_u64 uptr;
            __u32 refs;
        } check_refs;
        struct {
            __u32 out_access_fd;
            __u32 flags;
        } create_access;
        struct {
            __u32 access_pages_id;
        } destroy_access_pages;
        struct {
            __u32 flags;
            __u32 out_access_pages_id;
            __aligned_u64 iova;
            __aligned_u64 length;
            __aligned_u64 uptr;
        } access_pages;
        struct {
            __aligned_u64 iova;
            __aligned_u64 length;
            __aligned_u64 uptr;
            __u32 flags;
        } access_rw;
        struct {
            __u32 limit;
        } memory_limit;
        struct {
            __u32 ioas_id;
        } access_replace_ioas;
        struct {
            __u32 flags;
            __aligned_u64 iova;
            __aligned_u64 length;
            __aligned_u64 page_size;
            __aligned_u64 uptr;
            __aligned_u64 out_nr_dirty;
        } dirty;
        struct {
            __u32 id;
            __u32 iotlb;
        } check_iotlb;
        struct {
            __u32 dev_id;
            __u32 pasid;
            __u32 grpid;
            __u32 perm;
            __aligned_u64 addr;
        } trigger_iopf;
        struct {
            __u32 id;
            __u32 cache;
        } check_dev_cache;
        struct {
            __u32 dev_id;
        } trigger_vevent;
        struct {
            __u32 pasid;
            __u32 pt_id;
        } pasid_attach;
        struct {
            __u32 pasid;
            __u32 pt_id;
        } pasid_replace;
        struct {
            __u32 pasid;
        } pasid_detach;
        struct {
            __u32 pasid;
            __u32 hwpt_id;
        } pasid_check;
        struct {
            __u32 length;
            __u32 open_flags;
        } dmabuf_get;
        struct {
            __s32 dmabuf_fd;
            __u32 revoked;
        } dmabuf_revoke;
    };
    __u32 last;
};

/* iommufs's private ioctls: _IO(0xF5, nr). */
#define IOMMUFS_TYPE 0xf5
#define IOMMUFS_SYNC_CLOSE ((IOMMUFS_TYPE << 8) | 0x01)
#define IOMMUFS_FD_PATH ((IOMMUFS_TYPE << 8) | 0x03)

/* IOMMUFS_FD_PATH: the node of an fd the last fd-returning ioctl returned. */
struct iommufs_fd_path {
    __u32 size;
    __u32 index;
    char path[256];
};

#endif
