"""The iommufd and VFIO-cdev uAPI: ioctl numbers, struct layouts, flags.

Written from the facts in reference/iommufd-uapi.md (§1 encoding, §2 table,
§5 layouts, §6 enums, §11 VFIO), not from kernel headers. Layouts are cffi
declarations in ABI mode: cffi lays them out by the platform's C rules
(x86-64 LP64), and tests/test_layout.py holds every offset and size against
the reference tables.

``ffi`` is shared by core (decoding requests) and the Python client (building
them). Struct names are the uAPI's own.
"""
import cffi

ffi = cffi.FFI()
ffi.cdef(
    """
    struct iommu_destroy { uint32_t size; uint32_t id; };
    struct iommu_ioas_alloc { uint32_t size; uint32_t flags; uint32_t out_ioas_id; };
    struct iommu_iova_range { uint64_t start; uint64_t last; };
    struct iommu_ioas_iova_ranges {
        uint32_t size; uint32_t ioas_id; uint32_t num_iovas; uint32_t __reserved;
        uint64_t allowed_iovas; uint64_t out_iova_alignment;
    };
    struct iommu_ioas_allow_iovas {
        uint32_t size; uint32_t ioas_id; uint32_t num_iovas; uint32_t __reserved;
        uint64_t allowed_iovas;
    };
    struct iommu_ioas_map {
        uint32_t size; uint32_t flags; uint32_t ioas_id; uint32_t __reserved;
        uint64_t user_va; uint64_t length; uint64_t iova;
    };
    struct iommu_ioas_map_file {
        uint32_t size; uint32_t flags; uint32_t ioas_id; int32_t fd;
        uint64_t start; uint64_t length; uint64_t iova;
    };
    struct iommu_ioas_copy {
        uint32_t size; uint32_t flags; uint32_t dst_ioas_id; uint32_t src_ioas_id;
        uint64_t length; uint64_t dst_iova; uint64_t src_iova;
    };
    struct iommu_ioas_unmap {
        uint32_t size; uint32_t ioas_id; uint64_t iova; uint64_t length;
    };
    struct iommu_option {
        uint32_t size; uint32_t option_id; uint16_t op; uint16_t __reserved;
        uint32_t object_id; uint64_t val64;
    };
    struct iommu_vfio_ioas {
        uint32_t size; uint32_t ioas_id; uint16_t op; uint16_t __reserved;
    };
    struct iommu_hwpt_alloc {
        uint32_t size; uint32_t flags; uint32_t dev_id; uint32_t pt_id;
        uint32_t out_hwpt_id; uint32_t __reserved; uint32_t data_type;
        uint32_t data_len; uint64_t data_uptr; uint32_t fault_id;
        uint32_t __reserved2;
    };
    struct iommu_hw_info {
        uint32_t size; uint32_t flags; uint32_t dev_id; uint32_t data_len;
        uint64_t data_uptr; uint32_t out_data_type; uint8_t out_max_pasid_log2;
        uint8_t __reserved[3]; uint64_t out_capabilities;
    };
    struct iommu_hwpt_pgfault {
        uint32_t flags; uint32_t dev_id; uint32_t pasid; uint32_t grpid;
        uint32_t perm; uint32_t __reserved; uint64_t addr; uint32_t length;
        uint32_t cookie;
    };
    struct iommu_hwpt_page_response { uint32_t cookie; uint32_t code; };
    struct iommu_fault_alloc {
        uint32_t size; uint32_t flags; uint32_t out_fault_id; uint32_t out_fault_fd;
    };
    struct iommu_hwpt_set_dirty_tracking {
        uint32_t size; uint32_t flags; uint32_t hwpt_id; uint32_t __reserved;
    };
    struct iommu_hwpt_get_dirty_bitmap {
        uint32_t size; uint32_t hwpt_id; uint32_t flags; uint32_t __reserved;
        uint64_t iova; uint64_t length; uint64_t page_size; uint64_t data;
    };
    struct iommu_hwpt_invalidate {
        uint32_t size; uint32_t hwpt_id; uint64_t data_uptr; uint32_t data_type;
        uint32_t entry_len; uint32_t entry_num; uint32_t __reserved;
    };
    struct iommu_viommu_alloc {
        uint32_t size; uint32_t flags; uint32_t type; uint32_t dev_id; uint32_t hwpt_id;
        uint32_t out_viommu_id; uint32_t data_len; uint32_t __reserved; uint64_t data_uptr;
    };
    struct iommu_vdevice_alloc {
        uint32_t size; uint32_t viommu_id; uint32_t dev_id; uint32_t out_vdevice_id;
        uint64_t virt_id;
    };
    struct iommu_ioas_change_process { uint32_t size; uint32_t __reserved; };
    struct iommu_hw_queue_alloc {
        uint32_t size; uint32_t flags; uint32_t viommu_id; uint32_t type; uint32_t index;
        uint32_t out_hw_queue_id; uint64_t nesting_parent_iova; uint64_t length;
    };
    /* The selftest's driver data of a paging/nested HWPT_ALLOC (§12). */
    struct iommu_hwpt_selftest { uint32_t iotlb; uint32_t pagetable_type; };
    struct iommu_veventq_alloc {
        uint32_t size; uint32_t flags; uint32_t viommu_id; uint32_t type;
        uint32_t veventq_depth; uint32_t out_veventq_id; uint32_t out_veventq_fd;
        uint32_t __reserved;
    };

    /* IOMMU_TEST_CMD (reference §12): one struct, the op's fields in a union. */
    struct iommu_test_cmd {
        uint32_t size; uint32_t op; uint32_t id; uint32_t __reserved;
        union {
            struct { uint64_t start; uint64_t length; } add_reserved;
            struct { uint32_t out_stdev_id; uint32_t out_hwpt_id; uint32_t out_idev_id; } mock_domain;
            struct {
                uint32_t out_stdev_id; uint32_t out_hwpt_id; uint32_t out_idev_id;
                uint32_t dev_flags;
            } mock_domain_flags;
            struct { uint32_t pt_id; } mock_domain_replace;
            struct { uint64_t iova; uint64_t length; uint64_t uptr; } check_map;
            struct { uint64_t length; uint64_t uptr; uint32_t refs; } check_refs;
            struct { uint32_t out_access_fd; uint32_t flags; } create_access;
            struct { uint32_t access_pages_id; } destroy_access_pages;
            struct {
                uint32_t flags; uint32_t out_access_pages_id; uint64_t iova; uint64_t length;
                uint64_t uptr;
            } access_pages;
            struct { uint64_t iova; uint64_t length; uint64_t uptr; uint32_t flags; } access_rw;
            struct { uint32_t limit; } memory_limit;
            struct { uint32_t ioas_id; } access_replace_ioas;
            struct {
                uint32_t flags; uint64_t iova; uint64_t length; uint64_t page_size;
                uint64_t uptr; uint64_t out_nr_dirty;
            } dirty;
            struct { uint32_t id; uint32_t iotlb; } check_iotlb;
            struct {
                uint32_t dev_id; uint32_t pasid; uint32_t grpid; uint32_t perm; uint64_t addr;
            } trigger_iopf;
            struct { uint32_t id; uint32_t cache; } check_dev_cache;
            struct { uint32_t dev_id; } trigger_vevent;
            struct { uint32_t pasid; uint32_t pt_id; } pasid_attach;
            struct { uint32_t pasid; uint32_t pt_id; } pasid_replace;
            struct { uint32_t pasid; } pasid_detach;
            struct { uint32_t pasid; uint32_t hwpt_id; } pasid_check;
            struct { uint32_t length; uint32_t open_flags; } dmabuf_get;
            struct { int32_t dmabuf_fd; uint32_t revoked; } dmabuf_revoke;
        };
        uint32_t last;
    };

    struct iommufs_fd_path { uint32_t size; uint32_t index; char path[256]; };
    struct iommufs_pasid { uint32_t size; uint32_t flags; uint32_t pasid; uint32_t __reserved; };
    struct iommufs_sva_bind {
        uint32_t size; uint32_t flags; int32_t pid; uint32_t out_handle;
        uint32_t out_pasid; uint32_t __reserved;
    };
    struct iommufs_sva { uint32_t size; uint32_t handle; uint32_t out_pasid; uint32_t __reserved; };
    struct iommufs_drv_event {
        uint32_t type; uint32_t handle; uint32_t pasid; int32_t pid;
        uint64_t addr; uint32_t perm; uint32_t __reserved;
    };

    struct vfio_device_bind_iommufd {
        uint32_t argsz; uint32_t flags; int32_t iommufd; uint32_t out_devid;
        uint64_t token_uuid_ptr;
    };
    struct vfio_device_attach_iommufd_pt {
        uint32_t argsz; uint32_t flags; uint32_t pt_id; uint32_t pasid;
    };
    struct vfio_device_detach_iommufd_pt {
        uint32_t argsz; uint32_t flags; uint32_t pasid;
    };
    struct vfio_device_info {
        uint32_t argsz; uint32_t flags; uint32_t num_regions; uint32_t num_irqs;
        uint32_t cap_offset; uint32_t pad;
    };
    /* The VFIO device half (vfio-device.md §2.3-§2.6). */
    struct vfio_region_info {
        uint32_t argsz; uint32_t flags; uint32_t index; uint32_t cap_offset;
        uint64_t size; uint64_t offset;
    };
    struct vfio_irq_info { uint32_t argsz; uint32_t flags; uint32_t index; uint32_t count; };
    struct vfio_irq_set {
        uint32_t argsz; uint32_t flags; uint32_t index; uint32_t start; uint32_t count;
    };
    struct vfio_pci_dependent_device {
        uint32_t devid; uint16_t segment; uint8_t bus; uint8_t devfn;
    };
    struct vfio_pci_hot_reset_info { uint32_t argsz; uint32_t flags; uint32_t count; };
    struct vfio_pci_hot_reset { uint32_t argsz; uint32_t flags; uint32_t count; };

    /* VFIO type1 compatibility on /dev/iommu (reference §11.4). */
    struct vfio_info_cap_header { uint16_t id; uint16_t version; uint32_t next; };
    struct vfio_iommu_type1_info {
        uint32_t argsz; uint32_t flags; uint64_t iova_pgsizes; uint32_t cap_offset;
        uint32_t pad;
    };
    struct vfio_iova_range { uint64_t start; uint64_t end; };
    struct vfio_iommu_type1_info_cap_iova_range {
        struct vfio_info_cap_header header; uint32_t nr_iovas; uint32_t reserved;
        struct vfio_iova_range iova_ranges[];
    };
    struct vfio_iommu_type1_info_dma_avail {
        struct vfio_info_cap_header header; uint32_t avail;
    };
    struct vfio_iommu_type1_dma_map {
        uint32_t argsz; uint32_t flags; uint64_t vaddr; uint64_t iova; uint64_t size;
    };
    struct vfio_iommu_type1_dma_unmap {
        uint32_t argsz; uint32_t flags; uint64_t iova; uint64_t size;
    };
    """
)

# §1: every iommufd and VFIO ioctl is _IO(';', nr): no size, no direction.
IOMMUFD_TYPE = 0x3B


def _io(nr):
    return (IOMMUFD_TYPE << 8) | nr


IOMMU_DESTROY = _io(0x80)
IOMMU_IOAS_ALLOC = _io(0x81)
IOMMU_IOAS_ALLOW_IOVAS = _io(0x82)
IOMMU_IOAS_COPY = _io(0x83)
IOMMU_IOAS_IOVA_RANGES = _io(0x84)
IOMMU_IOAS_MAP = _io(0x85)
IOMMU_IOAS_UNMAP = _io(0x86)
IOMMU_OPTION = _io(0x87)
IOMMU_VFIO_IOAS = _io(0x88)
IOMMU_HWPT_ALLOC = _io(0x89)
IOMMU_GET_HW_INFO = _io(0x8A)
IOMMU_HWPT_SET_DIRTY_TRACKING = _io(0x8B)
IOMMU_HWPT_GET_DIRTY_BITMAP = _io(0x8C)
IOMMU_HWPT_INVALIDATE = _io(0x8D)
IOMMU_FAULT_QUEUE_ALLOC = _io(0x8E)
IOMMU_IOAS_MAP_FILE = _io(0x8F)
IOMMU_VIOMMU_ALLOC = _io(0x90)
IOMMU_VDEVICE_ALLOC = _io(0x91)
IOMMU_IOAS_CHANGE_PROCESS = _io(0x92)
IOMMU_VEVENTQ_ALLOC = _io(0x93)
IOMMU_HW_QUEUE_ALLOC = _io(0x94)
IOMMU_TEST_CMD = _io(0xA0)

# §11.1: VFIO_BASE = 100.
VFIO_BASE = 100
VFIO_GET_API_VERSION = _io(VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _io(VFIO_BASE + 1)
VFIO_SET_IOMMU = _io(VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _io(VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _io(VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _io(VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _io(VFIO_BASE + 6)
VFIO_DEVICE_GET_INFO = _io(VFIO_BASE + 7)
VFIO_DEVICE_GET_REGION_INFO = _io(VFIO_BASE + 8)
VFIO_DEVICE_GET_IRQ_INFO = _io(VFIO_BASE + 9)
VFIO_DEVICE_SET_IRQS = _io(VFIO_BASE + 10)
VFIO_DEVICE_RESET = _io(VFIO_BASE + 11)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _io(VFIO_BASE + 12)
VFIO_DEVICE_PCI_HOT_RESET = _io(VFIO_BASE + 13)
VFIO_DEVICE_IOEVENTFD = _io(VFIO_BASE + 16)
VFIO_IOMMU_GET_INFO = _io(VFIO_BASE + 12)
VFIO_IOMMU_MAP_DMA = _io(VFIO_BASE + 13)
VFIO_IOMMU_UNMAP_DMA = _io(VFIO_BASE + 14)
VFIO_DEVICE_FEATURE = _io(VFIO_BASE + 17)
# The container side of +17 (same number as VFIO_DEVICE_FEATURE): not
# supported by the compat layer (§11.4).
VFIO_IOMMU_DIRTY_PAGES = _io(VFIO_BASE + 17)
VFIO_DEVICE_BIND_IOMMUFD = _io(VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _io(VFIO_BASE + 19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _io(VFIO_BASE + 20)

# vfio-device.md §1.4.
VFIO_REGION_INFO_FLAG_READ = 1
VFIO_REGION_INFO_FLAG_WRITE = 2
VFIO_REGION_INFO_FLAG_MMAP = 4
VFIO_IRQ_INFO_EVENTFD = 1
VFIO_IRQ_INFO_MASKABLE = 2
VFIO_IRQ_INFO_AUTOMASKED = 4
VFIO_IRQ_INFO_NORESIZE = 8
VFIO_IRQ_SET_DATA_NONE = 1
VFIO_IRQ_SET_DATA_BOOL = 2
VFIO_IRQ_SET_DATA_EVENTFD = 4
VFIO_IRQ_SET_ACTION_MASK = 8
VFIO_IRQ_SET_ACTION_UNMASK = 0x10
VFIO_IRQ_SET_ACTION_TRIGGER = 0x20
VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX = 0, 1, 2
VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX = 3, 4
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 2
VFIO_PCI_DEVID_OWNED = 0
VFIO_PCI_DEVID_NOT_OWNED = 0xFFFFFFFF

# §6 flags and enums.
IOMMU_IOAS_MAP_FIXED_IOVA = 1
IOMMU_IOAS_MAP_WRITEABLE = 2
IOMMU_IOAS_MAP_READABLE = 4

IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1

IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2

IOMMU_HWPT_ALLOC_NEST_PARENT = 1
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 2
IOMMU_HWPT_ALLOC_FAULT_ID_VALID = 4
IOMMU_HWPT_ALLOC_PASID = 8

IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HWPT_DATA_SELFTEST = 0xDEAD

IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1

IOMMU_VIOMMU_TYPE_DEFAULT = 0
IOMMU_VEVENTQ_TYPE_DEFAULT = 0
IOMMU_HW_QUEUE_TYPE_DEFAULT = 0
# VEVENTQ_ALLOC's deepest queue (current kernels, §9.5).
IOMMU_VEVENTQ_MAX_DEPTH = 1 << 19

IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF      # §9.2: the mock driver's
IOMMU_HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF
IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1

IOMMU_HW_CAP_DIRTY_TRACKING = 1
IOMMU_HW_CAP_PCI_PASID_EXEC = 2
IOMMU_HW_CAP_PCI_PASID_PRIV = 4
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 8

IOMMU_PGFAULT_FLAGS_PASID_VALID = 1
IOMMU_PGFAULT_FLAGS_LAST_PAGE = 2
IOMMU_PGFAULT_PERM_READ = 1
IOMMU_PGFAULT_PERM_WRITE = 2
IOMMU_PAGE_RESP_SUCCESS = 0
IOMMU_PAGE_RESP_INVALID = 1

VFIO_DEVICE_BIND_FLAG_TOKEN = 1
VFIO_DEVICE_ATTACH_PASID = 1
VFIO_DEVICE_DETACH_PASID = 1

VFIO_DEVICE_FLAGS_RESET = 1
VFIO_DEVICE_FLAGS_PCI = 2

# §11.4: VFIO type1 compatibility. GET_API_VERSION answers VFIO_API_VERSION;
# IOMMU types / extensions of VFIO_CHECK_EXTENSION and VFIO_SET_IOMMU.
VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_TYPE1_NESTING_IOMMU = 6      # the old nesting type, now reserved
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_IOMMU_INFO_PGSIZES = 1
VFIO_IOMMU_INFO_CAPS = 2
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

VFIO_DMA_MAP_FLAG_READ = 1
VFIO_DMA_MAP_FLAG_WRITE = 2
VFIO_DMA_MAP_FLAG_VADDR = 4

VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1
VFIO_DMA_UNMAP_FLAG_ALL = 2
VFIO_DMA_UNMAP_FLAG_VADDR = 4

# §12: IOMMU_TEST_CMD ops and the mock driver's constants.
IOMMU_TEST_OP_ADD_RESERVED = 1
IOMMU_TEST_OP_MOCK_DOMAIN = 2
IOMMU_TEST_OP_MD_CHECK_MAP = 3
IOMMU_TEST_OP_MD_CHECK_REFS = 4
IOMMU_TEST_OP_CREATE_ACCESS = 5
IOMMU_TEST_OP_DESTROY_ACCESS_PAGES = 6
IOMMU_TEST_OP_ACCESS_PAGES = 7
IOMMU_TEST_OP_ACCESS_RW = 8
IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT = 9
IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE = 10
IOMMU_TEST_OP_ACCESS_REPLACE_IOAS = 11
IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS = 12
IOMMU_TEST_OP_DIRTY = 13
IOMMU_TEST_OP_MD_CHECK_IOTLB = 14
IOMMU_TEST_OP_TRIGGER_IOPF = 15
IOMMU_TEST_OP_DEV_CHECK_CACHE = 16
IOMMU_TEST_OP_TRIGGER_VEVENT = 17
IOMMU_TEST_OP_PASID_ATTACH = 18
IOMMU_TEST_OP_PASID_REPLACE = 19
IOMMU_TEST_OP_PASID_DETACH = 20
IOMMU_TEST_OP_PASID_CHECK_HWPT = 21
IOMMU_TEST_OP_DMABUF_GET = 22
IOMMU_TEST_OP_DMABUF_REVOKE = 23

MOCK_APERTURE_START = 1 << 24
MOCK_APERTURE_LAST = (1 << 31) - 1
MOCK_PAGE_SIZE = 2048
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE
MOCK_PASID_WIDTH = 20
IOMMU_TEST_PASID_RESERVED = 1024
MOCK_IOMMUPT_DEFAULT = 0
MOCK_IOMMUPT_HUGE = 1
MOCK_DEV_CACHE_NUM = 4
MOCK_DEV_CACHE_ID_MAX = MOCK_DEV_CACHE_NUM - 1
IOMMU_TEST_DEV_CACHE_DEFAULT = 0xBADDAD

MOCK_FLAGS_ACCESS_WRITE = 1 << 0
MOCK_FLAGS_ACCESS_SYZ = 1 << 16
MOCK_ACCESS_RW_WRITE = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH = 1 << 2
MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0
MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0
MOCK_FLAGS_DEVICE_PASID = 1 << 2

U64_MAX = (1 << 64) - 1
# ULONG_MAX on LP64: the kernel's EOVERFLOW bound for iova/length (§7).
ULONG_MAX = U64_MAX
# The host page size: pinning granule of the kernel and of this emulator.
PAGE_SIZE = 4096

# The project's own ioctls on its nodes (docs/nodes.md, "Private ioctls"). _IO encoded,
# type 0xF5, so that FUSE hands the raw pointer over like it does for ';'.
IOMMUFS_TYPE = 0xF5
IOMMUFS_NULL = (IOMMUFS_TYPE << 8) | 0x00
IOMMUFS_SYNC_CLOSE = (IOMMUFS_TYPE << 8) | 0x01
IOMMUFS_WHOAMI = (IOMMUFS_TYPE << 8) | 0x02
IOMMUFS_FD_PATH = (IOMMUFS_TYPE << 8) | 0x03
# The driver side of a device (devices/<name>/driver, docs/driver-side.md).
IOMMUFS_PASID_ALLOC = (IOMMUFS_TYPE << 8) | 0x10
IOMMUFS_PASID_FREE = (IOMMUFS_TYPE << 8) | 0x11
IOMMUFS_SVA_BIND = (IOMMUFS_TYPE << 8) | 0x12
IOMMUFS_SVA_UNBIND = (IOMMUFS_TYPE << 8) | 0x13
IOMMUFS_SVA_GET_PASID = (IOMMUFS_TYPE << 8) | 0x14
IOMMUFS_EVENT_MM_EXIT = 1
IOMMUFS_EVENT_IOPF = 2


def sizeof(struct_name):
    """Bytes of ``struct <struct_name>`` as laid out here (x86-64)."""
    return ffi.sizeof("struct " + struct_name)
