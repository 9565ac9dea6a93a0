/* The uAPI every C test client of iommufs uses, in one place: what a program
 * gets from <linux/iommufd.h>, <linux/vfio.h> and the kernel's
 * iommufd_test.h (Debian's headers predate them), written from the
 * reference (§1, §2, §5, §6, §11.1, §11.2, §11.4, §12), plus iommufs's own
 * numbers and structs (README: "Private ioctls", "Ioctls that return file
 * descriptors", "Device DMA", "The driver side").
 *
 * Struct and field names are the uAPI's own. tests/test_layout.py compiles
 * this header and holds every struct's sizeof and every field's offset and
 * size against the reference's tables (its LAYOUTS), the same table core's
 * cffi layouts (core/uapi.py) are checked against. What the preload shim
 * reads and writes (the fd-returning ioctls, IOMMU_TEST_CMD, the private
 * IOMMUFS_SYNC_CLOSE / IOMMUFS_FD_PATH) is the shim's own header, included
 * here, so the clients and the shim share one declaration of each.
 * Declarations only: no helpers. */
#ifndef IOMMUFS_TEST_UAPI_H
#define IOMMUFS_TEST_UAPI_H
#include <linux/types.h>

#include "../../cext/preload_uapi.h"

/* ------------------------------------------------ §1, §2: iommufd ioctls */

/* _IO(';', nr): no direction, no size (IOMMUFD_IO in preload_uapi.h). */

#define IOMMU_IOAS_ALLOC IOMMUFD_IO(0x81)
#define IOMMU_IOAS_ALLOW_IOVAS IOMMUFD_IO(0x82)
#define IOMMU_IOAS_COPY IOMMUFD_IO(0x83)
#define IOMMU_IOAS_IOVA_RANGES IOMMUFD_IO(0x84)
#define IOMMU_IOAS_MAP IOMMUFD_IO(0x85)
#define IOMMU_IOAS_UNMAP IOMMUFD_IO(0x86)
#define IOMMU_OPTION IOMMUFD_IO(0x87)
#define IOMMU_VFIO_IOAS IOMMUFD_IO(0x88)
#define IOMMU_HWPT_ALLOC IOMMUFD_IO(0x89)
#define IOMMU_GET_HW_INFO IOMMUFD_IO(0x8a)
#define IOMMU_IOAS_MAP_FILE IOMMUFD_IO(0x8f)
#define IOMMU_HW_QUEUE_ALLOC IOMMUFD_IO(0x94)

/* §11.1: VFIO shares the type, from VFIO_BASE. */
#define VFIO_BASE 100
#define VFIO_GET_API_VERSION IOMMUFD_IO(VFIO_BASE + 0)
#define VFIO_CHECK_EXTENSION IOMMUFD_IO(VFIO_BASE + 1)
#define VFIO_SET_IOMMU IOMMUFD_IO(VFIO_BASE + 2)
#define VFIO_DEVICE_GET_INFO IOMMUFD_IO(VFIO_BASE + 7)
#define VFIO_DEVICE_GET_REGION_INFO IOMMUFD_IO(VFIO_BASE + 8)
#define VFIO_DEVICE_GET_IRQ_INFO IOMMUFD_IO(VFIO_BASE + 9)
#define VFIO_DEVICE_SET_IRQS IOMMUFD_IO(VFIO_BASE + 10)
#define VFIO_DEVICE_RESET IOMMUFD_IO(VFIO_BASE + 11)
#define VFIO_DEVICE_GET_PCI_HOT_RESET_INFO IOMMUFD_IO(VFIO_BASE + 12)
#define VFIO_DEVICE_PCI_HOT_RESET IOMMUFD_IO(VFIO_BASE + 13)
#define VFIO_IOMMU_GET_INFO IOMMUFD_IO(VFIO_BASE + 12)
#define VFIO_IOMMU_MAP_DMA IOMMUFD_IO(VFIO_BASE + 13)
#define VFIO_IOMMU_UNMAP_DMA IOMMUFD_IO(VFIO_BASE + 14)
#define VFIO_DEVICE_FEATURE IOMMUFD_IO(VFIO_BASE + 17)
#define VFIO_IOMMU_DIRTY_PAGES IOMMUFD_IO(VFIO_BASE + 17)   /* the container side of +17 */
#define VFIO_DEVICE_BIND_IOMMUFD IOMMUFD_IO(VFIO_BASE + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT IOMMUFD_IO(VFIO_BASE + 19)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT IOMMUFD_IO(VFIO_BASE + 20)

/* ------------------------------------------------------ §6: flags, enums */

#define IOMMU_IOAS_MAP_FIXED_IOVA 1
#define IOMMU_IOAS_MAP_WRITEABLE 2
#define IOMMU_IOAS_MAP_READABLE 4

#define IOMMU_OPTION_RLIMIT_MODE 0
#define IOMMU_OPTION_HUGE_PAGES 1
#define IOMMU_OPTION_OP_SET 0
#define IOMMU_OPTION_OP_GET 1

#define IOMMU_VFIO_IOAS_GET 0
#define IOMMU_VFIO_IOAS_SET 1
#define IOMMU_VFIO_IOAS_CLEAR 2

#define IOMMU_HWPT_ALLOC_NEST_PARENT 1
#define IOMMU_HWPT_ALLOC_DIRTY_TRACKING 2
#define IOMMU_HWPT_ALLOC_FAULT_ID_VALID 4
#define IOMMU_HWPT_ALLOC_PASID 8

#define IOMMU_PGFAULT_FLAGS_PASID_VALID 1
#define IOMMU_PGFAULT_FLAGS_LAST_PAGE 2
#define IOMMU_PGFAULT_PERM_READ 1
#define IOMMU_PGFAULT_PERM_WRITE 2
#define IOMMU_PAGE_RESP_SUCCESS 0
#define IOMMU_PAGE_RESP_INVALID 1

#define VFIO_DEVICE_ATTACH_PASID 1
#define VFIO_DEVICE_DETACH_PASID 1

/* §11.4: type1 compatibility. */
#define VFIO_TYPE1_IOMMU 1
#define VFIO_TYPE1v2_IOMMU 3
#define VFIO_DMA_CC_IOMMU 4
#define VFIO_UNMAP_ALL 9
#define VFIO_UPDATE_VADDR 10
#define VFIO_IOMMU_INFO_PGSIZES 1
#define VFIO_IOMMU_INFO_CAPS 2
#define VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE 1
#define VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL 3
#define VFIO_DMA_MAP_FLAG_READ 1
#define VFIO_DMA_MAP_FLAG_WRITE 2
#define VFIO_DMA_MAP_FLAG_VADDR 4
#define VFIO_DMA_UNMAP_FLAG_ALL 2

/* --------------------------------------------------- §5: iommufd structs */


struct iommu_ioas_alloc {
    __u32 size;
    __u32 flags;
    __u32 out_ioas_id;
};

struct iommu_iova_range {
    __aligned_u64 start;
    __aligned_u64 last;
};

struct iommu_ioas_iova_ranges {
    __u32 size;
    __u32 ioas_id;
    __u32 num_iovas;
    __u32 __reserved;
    __aligned_u64 allowed_iovas;
    __aligned_u64 out_iova_alignment;
};

struct iommu_ioas_allow_iovas {
    __u32 size;
    __u32 ioas_id;
    __u32 num_iovas;
    __u32 __reserved;
    __aligned_u64 allowed_iovas;
};

struct iommu_ioas_map {
    __u32 size;
    __u32 flags;
    __u32 ioas_id;
    __u32 __reserved;
    __aligned_u64 user_va;
    __aligned_u64 length;
    __aligned_u64 iova;
};

struct iommu_ioas_map_file {
    __u32 size;
    __u32 flags;
    __u32 ioas_id;
    __s32 fd;
    __aligned_u64 start;
    __aligned_u64 length;
    __aligned_u64 iova;
};

struct iommu_ioas_copy {
    __u32 size;
    __u32 flags;
    __u32 dst_ioas_id;
    __u32 src_ioas_id;
    __aligned_u64 length;
    __aligned_u64 dst_iova;
    __aligned_u64 src_iova;
};

struct iommu_ioas_unmap {
    __u32 size;
    __u32 ioas_id;
    __aligned_u64 iova;
    __aligned_u64 length;
};

struct iommu_option {
    __u32 size;
    __u32 option_id;
    __u16 op;
    __u16 __reserved;
    __u32 object_id;
    __aligned_u64 val64;
};

struct iommu_vfio_ioas {
    __u32 size;
    __u32 ioas_id;
    __u16 op;
    __u16 __reserved;
};

struct iommu_hwpt_alloc {
    __u32 size;
    __u32 flags;
    __u32 dev_id;
    __u32 pt_id;
    __u32 out_hwpt_id;
    __u32 __reserved;
    __u32 data_type;
    __u32 data_len;
    __aligned_u64 data_uptr;
    __u32 fault_id;
    __u32 __reserved2;
};

struct iommu_hw_info {
    __u32 size;
    __u32 flags;
    __u32 dev_id;
    __u32 data_len;
    __aligned_u64 data_uptr;
    union {
        __u32 in_data_type;
        __u32 out_data_type;
    };
    __u8 out_max_pasid_log2;
    __u8 __reserved[3];
    __aligned_u64 out_capabilities;
};

/* Read from a fault fd (§10.1). */
struct iommu_hwpt_pgfault {
    __u32 flags;
    __u32 dev_id;
    __u32 pasid;
    __u32 grpid;
    __u32 perm;
    __u32 __reserved;
    __aligned_u64 addr;
    __u32 length;
    __u32 cookie;
};

/* Written to a fault fd (§10.1). */
struct iommu_hwpt_page_response {
    __u32 cookie;
    __u32 code;
};



/* ------------------------------------------------ §11.2: VFIO cdev structs */

struct vfio_device_bind_iommufd {
    __u32 argsz;
    __u32 flags;
    __s32 iommufd;
    __u32 out_devid;
    __aligned_u64 token_uuid_ptr;
};

struct vfio_device_attach_iommufd_pt {
    __u32 argsz;
    __u32 flags;
    __u32 pt_id;
    __u32 pasid;
};

struct vfio_device_detach_iommufd_pt {
    __u32 argsz;
    __u32 flags;
    __u32 pasid;
};

struct vfio_device_info {
    __u32 argsz;
    __u32 flags;
    __u32 num_regions;
    __u32 num_irqs;
    __u32 cap_offset;
    __u32 pad;
};

/* ------------------------------- vfio-device.md §1.2-§1.4, §2.3-§2.6: the PCI device */

/* Region i lives at file offset i << 40 of the device fd (§1.2). */
#define VFIO_PCI_OFFSET_SHIFT 40
#define VFIO_PCI_BAR0_REGION_INDEX 0
#define VFIO_PCI_ROM_REGION_INDEX 6
#define VFIO_PCI_CONFIG_REGION_INDEX 7
#define VFIO_PCI_VGA_REGION_INDEX 8
#define VFIO_PCI_INTX_IRQ_INDEX 0
#define VFIO_PCI_MSI_IRQ_INDEX 1
#define VFIO_PCI_MSIX_IRQ_INDEX 2
#define VFIO_PCI_ERR_IRQ_INDEX 3
#define VFIO_PCI_REQ_IRQ_INDEX 4

#define VFIO_DEVICE_FLAGS_RESET 1
#define VFIO_DEVICE_FLAGS_PCI 2
#define VFIO_REGION_INFO_FLAG_READ 1
#define VFIO_REGION_INFO_FLAG_WRITE 2
#define VFIO_REGION_INFO_FLAG_MMAP 4
#define VFIO_REGION_INFO_FLAG_CAPS 8
#define VFIO_IRQ_INFO_EVENTFD 1
#define VFIO_IRQ_INFO_MASKABLE 2
#define VFIO_IRQ_INFO_AUTOMASKED 4
#define VFIO_IRQ_INFO_NORESIZE 8
#define VFIO_IRQ_SET_DATA_NONE 1
#define VFIO_IRQ_SET_DATA_BOOL 2
#define VFIO_IRQ_SET_DATA_EVENTFD 4
#define VFIO_IRQ_SET_ACTION_MASK 8
#define VFIO_IRQ_SET_ACTION_UNMASK 0x10
#define VFIO_IRQ_SET_ACTION_TRIGGER 0x20
#define VFIO_PCI_HOT_RESET_FLAG_DEV_ID 1
#define VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED 2
#define VFIO_PCI_DEVID_OWNED 0
#define VFIO_PCI_DEVID_NOT_OWNED (-1)

struct vfio_region_info {
    __u32 argsz;
    __u32 flags;
    __u32 index;
    __u32 cap_offset;
    __aligned_u64 size;
    __aligned_u64 offset;
};

struct vfio_irq_info {
    __u32 argsz;
    __u32 flags;
    __u32 index;
    __u32 count;
};

struct vfio_irq_set {
    __u32 argsz;
    __u32 flags;
    __u32 index;
    __u32 start;
    __u32 count;
    __u8 data[];                         /* count x u8 (BOOL) or s32 (EVENTFD); not 8-aligned */
};

struct vfio_pci_dependent_device {
    union {
        __u32 group_id;                  /* group form */
        __u32 devid;                     /* cdev form (flags DEV_ID) */
    };
    __u16 segment;
    __u8 bus;
    __u8 devfn;
};

struct vfio_pci_hot_reset_info {
    __u32 argsz;
    __u32 flags;
    __u32 count;
    struct vfio_pci_dependent_device devices[];
};

struct vfio_pci_hot_reset {
    __u32 argsz;
    __u32 flags;
    __u32 count;                         /* 0 on a cdev: ownership comes from the iommufd */
    __s32 group_fds[];
};

/* ------------------------------------------- §11.4: type1 compatibility */

struct vfio_info_cap_header {
    __u16 id;
    __u16 version;
    __u32 next;
};

struct vfio_iommu_type1_info {
    __u32 argsz;
    __u32 flags;
    __aligned_u64 iova_pgsizes;
    __u32 cap_offset;
    __u32 pad;
};

struct vfio_iova_range {
    __aligned_u64 start;
    __aligned_u64 end;
};

struct vfio_iommu_type1_info_cap_iova_range {
    struct vfio_info_cap_header header;
    __u32 nr_iovas;
    __u32 reserved;
    struct vfio_iova_range iova_ranges[];
};

struct vfio_iommu_type1_info_dma_avail {
    struct vfio_info_cap_header header;
    __u32 avail;
};

struct vfio_iommu_type1_dma_map {
    __u32 argsz;
    __u32 flags;
    __aligned_u64 vaddr;
    __aligned_u64 iova;
    __aligned_u64 size;
};

struct vfio_iommu_type1_dma_unmap {
    __u32 argsz;
    __u32 flags;
    __aligned_u64 iova;
    __aligned_u64 size;
};

/* ------------------------------------------------- §12: IOMMU_TEST_CMD */

#define IOMMU_TEST_OP_ADD_RESERVED 1
#define IOMMU_TEST_OP_MOCK_DOMAIN 2
#define IOMMU_TEST_OP_MD_CHECK_MAP 3
#define IOMMU_TEST_OP_MD_CHECK_REFS 4
/* IOMMU_TEST_OP_CREATE_ACCESS (5) is in preload_uapi.h. */
#define IOMMU_TEST_OP_DESTROY_ACCESS_PAGES 6
#define IOMMU_TEST_OP_ACCESS_PAGES 7
#define IOMMU_TEST_OP_ACCESS_RW 8
#define IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT 9
#define IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE 10
#define IOMMU_TEST_OP_ACCESS_REPLACE_IOAS 11
#define IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS 12
#define IOMMU_TEST_OP_DIRTY 13
#define IOMMU_TEST_OP_MD_CHECK_IOTLB 14
#define IOMMU_TEST_OP_TRIGGER_IOPF 15
#define IOMMU_TEST_OP_DEV_CHECK_CACHE 16
#define IOMMU_TEST_OP_TRIGGER_VEVENT 17
#define IOMMU_TEST_OP_PASID_ATTACH 18
#define IOMMU_TEST_OP_PASID_REPLACE 19
#define IOMMU_TEST_OP_PASID_DETACH 20
#define IOMMU_TEST_OP_PASID_CHECK_HWPT 21
#define IOMMU_TEST_OP_DMABUF_GET 22
#define IOMMU_TEST_OP_DMABUF_REVOKE 23

#define MOCK_APERTURE_START (1ULL << 24)
#define MOCK_APERTURE_LAST ((1ULL << 31) - 1)
#define MOCK_PAGE_SIZE 2048
#define MOCK_FLAGS_ACCESS_WRITE (1 << 0)
#define MOCK_FLAGS_ACCESS_SYZ (1 << 16)
#define MOCK_ACCESS_RW_WRITE (1 << 0)
#define MOCK_ACCESS_RW_SLOW_PATH (1 << 2)
#define MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES (1 << 0)
#define MOCK_FLAGS_DEVICE_NO_DIRTY (1 << 0)
#define MOCK_FLAGS_DEVICE_PASID (1 << 2)


/* ------------------------------------ iommufs's own (README, DESIGN.md) */

/* Private ioctls: _IO(0xF5, nr) on the iommu, VFIO, fault and access nodes. */
#define IOMMUFS_NULL ((IOMMUFS_TYPE << 8) | 0x00)

/* Frames (README, "Frames"): one write() of a request, one read() of the
 * reply, by the same thread on the same open file; little-endian. */
#define IOMMUFS_FRAME_CLOSE 0            /* cmd of the synchronous close */

struct iommufs_frame_request {
    char magic[4];                       /* "IOFS" */
    __u32 cmd;                           /* the ioctl number */
    __u32 arg_len;                       /* bytes of arg */
    __u32 flags;                         /* 0 */
    __u8 arg[];                          /* the argument as ioctl() would pass it */
};

struct iommufs_frame_reply {
    char magic[4];                       /* "IOFS" */
    __s32 result;                        /* what ioctl() returns, or -errno */
    __u32 arg_len;
    __u32 extra_len;
    __u8 arg[];                          /* arg_len bytes, then extra_len bytes */
};


/* The driver side (devices/<name>/driver). */
#define IOMMUFS_PASID_ALLOC ((IOMMUFS_TYPE << 8) | 0x10)
#define IOMMUFS_PASID_FREE ((IOMMUFS_TYPE << 8) | 0x11)
#define IOMMUFS_SVA_BIND ((IOMMUFS_TYPE << 8) | 0x12)
#define IOMMUFS_SVA_UNBIND ((IOMMUFS_TYPE << 8) | 0x13)
#define IOMMUFS_SVA_GET_PASID ((IOMMUFS_TYPE << 8) | 0x14)
#define IOMMUFS_EVENT_MM_EXIT 1
#define IOMMUFS_EVENT_IOPF 2

struct iommufs_pasid {
    __u32 size;
    __u32 flags;
    __u32 pasid;
    __u32 __reserved;
};

struct iommufs_sva_bind {
    __u32 size;
    __u32 flags;
    __s32 pid;
    __u32 out_handle;
    __u32 out_pasid;
    __u32 __reserved;
};

struct iommufs_sva {
    __u32 size;
    __u32 handle;
    __u32 out_pasid;
    __u32 __reserved;
};

/* read() of a driver node: one record per event. */
struct iommufs_drv_event {
    __u32 type;
    __u32 handle;
    __u32 pasid;
    __s32 pid;
    __aligned_u64 addr;
    __u32 perm;
    __u32 __reserved;
};

/* Device DMA (devices/<name>/dma): one request frame per write(), its reply
 * on the next read(); little-endian, no padding. */
#define IOMMUFS_DMA_OP_READ 1            /* memory -> device: data comes back */
#define IOMMUFS_DMA_OP_WRITE 2           /* data -> memory */
#define IOMMUFS_DMA_FLAG_PASID 1         /* pasid is valid */
#define IOMMUFS_DMA_FLAG_NO_PRI 2        /* fail instead of waiting for a page response */
#define IOMMUFS_DMA_MAX (512 * 1024)     /* bytes per frame */

struct iommufs_dma_request {
    char magic[4];                       /* "IODM" */
    __u32 op;
    __u32 flags;
    __u32 pasid;
    __aligned_u64 iova;
    __u32 length;                        /* bytes */
    __u32 __reserved;
    __u8 data[];                         /* length bytes, for a write */
};

struct iommufs_dma_reply {
    char magic[4];                       /* "IODM" */
    __s32 status;                        /* 0 or -errno */
    __u32 moved;                         /* bytes */
    __u32 __reserved;
    __aligned_u64 fault_iova;            /* when status != 0 */
    __u8 data[];                         /* the bytes of a read */
};

#endif
