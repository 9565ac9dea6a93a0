"""The struct layouts core decodes (core.uapi, cffi) against the reference's
tables: every field's offset and size, every struct's sizeof (reference §5,
§11.2), and the ioctl numbers of §2 and §11.1."""
import pytest

from core import uapi
from core.uapi import ffi

# struct -> (sizeof, [(field, offset, size), ...]) as reference §5 / §11.2 give them.
LAYOUTS = {
    "iommu_destroy": (8, [("size", 0, 4), ("id", 4, 4)]),
    "iommu_ioas_alloc": (12, [("size", 0, 4), ("flags", 4, 4), ("out_ioas_id", 8, 4)]),
    "iommu_iova_range": (16, [("start", 0, 8), ("last", 8, 8)]),
    "iommu_ioas_iova_ranges": (32, [("size", 0, 4), ("ioas_id", 4, 4), ("num_iovas", 8, 4),
                                    ("__reserved", 12, 4), ("allowed_iovas", 16, 8),
                                    ("out_iova_alignment", 24, 8)]),
    "iommu_ioas_allow_iovas": (24, [("size", 0, 4), ("ioas_id", 4, 4), ("num_iovas", 8, 4),
                                    ("__reserved", 12, 4), ("allowed_iovas", 16, 8)]),
    "iommu_ioas_map": (40, [("size", 0, 4), ("flags", 4, 4), ("ioas_id", 8, 4), ("__reserved", 12, 4),
                            ("user_va", 16, 8), ("length", 24, 8), ("iova", 32, 8)]),
    "iommu_ioas_map_file": (40, [("size", 0, 4), ("flags", 4, 4), ("ioas_id", 8, 4), ("fd", 12, 4),
                                 ("start", 16, 8), ("length", 24, 8), ("iova", 32, 8)]),
    "iommu_ioas_copy": (40, [("size", 0, 4), ("flags", 4, 4), ("dst_ioas_id", 8, 4),
                             ("src_ioas_id", 12, 4), ("length", 16, 8), ("dst_iova", 24, 8),
                             ("src_iova", 32, 8)]),
    "iommu_ioas_unmap": (24, [("size", 0, 4), ("ioas_id", 4, 4), ("iova", 8, 8), ("length", 16, 8)]),
    "iommu_option": (24, [("size", 0, 4), ("option_id", 4, 4), ("op", 8, 2), ("__reserved", 10, 2),
                          ("object_id", 12, 4), ("val64", 16, 8)]),
    "iommu_vfio_ioas": (12, [("size", 0, 4), ("ioas_id", 4, 4), ("op", 8, 2), ("__reserved", 10, 2)]),
    "iommu_hwpt_alloc": (48, [("size", 0, 4), ("flags", 4, 4), ("dev_id", 8, 4), ("pt_id", 12, 4),
                              ("out_hwpt_id", 16, 4), ("__reserved", 20, 4), ("data_type", 24, 4),
                              ("data_len", 28, 4), ("data_uptr", 32, 8), ("fault_id", 40, 4),
                              ("__reserved2", 44, 4)]),
    "iommu_hw_info": (40, [("size", 0, 4), ("flags", 4, 4), ("dev_id", 8, 4), ("data_len", 12, 4),
                           ("data_uptr", 16, 8), ("out_data_type", 24, 4), ("out_max_pasid_log2", 28, 1),
                           ("__reserved", 29, 3), ("out_capabilities", 32, 8)]),
    "iommu_hwpt_pgfault": (40, [("flags", 0, 4), ("dev_id", 4, 4), ("pasid", 8, 4), ("grpid", 12, 4),
                                ("perm", 16, 4), ("__reserved", 20, 4), ("addr", 24, 8),
                                ("length", 32, 4), ("cookie", 36, 4)]),
    "iommu_hwpt_page_response": (8, [("cookie", 0, 4), ("code", 4, 4)]),
    "iommu_fault_alloc": (16, [("size", 0, 4), ("flags", 4, 4), ("out_fault_id", 8, 4),
                               ("out_fault_fd", 12, 4)]),
    "vfio_device_bind_iommufd": (24, [("argsz", 0, 4), ("flags", 4, 4), ("iommufd", 8, 4),
                                      ("out_devid", 12, 4), ("token_uuid_ptr", 16, 8)]),
    "vfio_device_attach_iommufd_pt": (16, [("argsz", 0, 4), ("flags", 4, 4), ("pt_id", 8, 4),
                                           ("pasid", 12, 4)]),
    "vfio_device_detach_iommufd_pt": (12, [("argsz", 0, 4), ("flags", 4, 4), ("pasid", 8, 4)]),
    "vfio_device_info": (24, [("argsz", 0, 4), ("flags", 4, 4), ("num_regions", 8, 4),
                              ("num_irqs", 12, 4), ("cap_offset", 16, 4), ("pad", 20, 4)]),
    # §11.4 (type1 compatibility); a flexible array member has size None.
    "vfio_info_cap_header": (8, [("id", 0, 2), ("version", 2, 2), ("next", 4, 4)]),
    "vfio_iommu_type1_info": (24, [("argsz", 0, 4), ("flags", 4, 4), ("iova_pgsizes", 8, 8),
                                   ("cap_offset", 16, 4), ("pad", 20, 4)]),
    "vfio_iova_range": (16, [("start", 0, 8), ("end", 8, 8)]),
    "vfio_iommu_type1_info_cap_iova_range": (16, [("header", 0, 8), ("nr_iovas", 8, 4),
                                                  ("reserved", 12, 4), ("iova_ranges", 16, None)]),
    "vfio_iommu_type1_info_dma_avail": (12, [("header", 0, 8), ("avail", 8, 4)]),
    "vfio_iommu_type1_dma_map": (32, [("argsz", 0, 4), ("flags", 4, 4), ("vaddr", 8, 8),
                                      ("iova", 16, 8), ("size", 24, 8)]),
    "vfio_iommu_type1_dma_unmap": (24, [("argsz", 0, 4), ("flags", 4, 4), ("iova", 8, 8),
                                        ("size", 16, 8)]),
}


def _field_size(t):
    # An open array (flexible array member) has no size of its own.
    return None if t.kind == "array" and t.length is None else ffi.sizeof(t)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_matches_reference(name):
    size, fields = LAYOUTS[name]
    t = ffi.typeof(f"struct {name}")
    assert ffi.sizeof(t) == size
    got = {f: (fi.offset, _field_size(fi.type)) for f, fi in t.fields}
    assert got == {f: (o, s) for f, o, s in fields}


def test_ioctl_numbers_match_reference():
    table = {
        "IOMMU_DESTROY": 0x3B80, "IOMMU_IOAS_ALLOC": 0x3B81, "IOMMU_IOAS_ALLOW_IOVAS": 0x3B82,
        "IOMMU_IOAS_COPY": 0x3B83, "IOMMU_IOAS_IOVA_RANGES": 0x3B84, "IOMMU_IOAS_MAP": 0x3B85,
        "IOMMU_IOAS_UNMAP": 0x3B86, "IOMMU_OPTION": 0x3B87, "IOMMU_VFIO_IOAS": 0x3B88,
        "IOMMU_HWPT_ALLOC": 0x3B89, "IOMMU_GET_HW_INFO": 0x3B8A, "IOMMU_FAULT_QUEUE_ALLOC": 0x3B8E,
        "IOMMU_IOAS_MAP_FILE": 0x3B8F, "IOMMU_HW_QUEUE_ALLOC": 0x3B94, "IOMMU_TEST_CMD": 0x3BA0,
        "VFIO_GET_API_VERSION": 0x3B64, "VFIO_DEVICE_GET_INFO": 0x3B6B, "VFIO_IOMMU_GET_INFO": 0x3B70,
        "VFIO_IOMMU_MAP_DMA": 0x3B71, "VFIO_IOMMU_UNMAP_DMA": 0x3B72, "VFIO_DEVICE_FEATURE": 0x3B75,
        "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76, "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77,
        "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
        "VFIO_CHECK_EXTENSION": 0x3B65, "VFIO_SET_IOMMU": 0x3B66,
    }
    assert {k: getattr(uapi, k) for k in table} == table


def test_vfio_compat_values_match_reference():
    """§11.4: extension / IOMMU type numbers, flags and capability IDs."""
    table = {
        "VFIO_API_VERSION": 0, "VFIO_TYPE1_IOMMU": 1, "VFIO_TYPE1v2_IOMMU": 3,
        "VFIO_DMA_CC_IOMMU": 4, "VFIO_TYPE1_NESTING_IOMMU": 6, "VFIO_NOIOMMU_IOMMU": 8,
        "VFIO_UNMAP_ALL": 9, "VFIO_UPDATE_VADDR": 10,
        "VFIO_IOMMU_INFO_PGSIZES": 1, "VFIO_IOMMU_INFO_CAPS": 2,
        "VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE": 1, "VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL": 3,
        "VFIO_DMA_MAP_FLAG_READ": 1, "VFIO_DMA_MAP_FLAG_WRITE": 2, "VFIO_DMA_MAP_FLAG_VADDR": 4,
        "VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP": 1, "VFIO_DMA_UNMAP_FLAG_ALL": 2,
        "VFIO_DMA_UNMAP_FLAG_VADDR": 4,
        "IOMMU_VFIO_IOAS_GET": 0, "IOMMU_VFIO_IOAS_SET": 1, "IOMMU_VFIO_IOAS_CLEAR": 2,
    }
    assert {k: getattr(uapi, k) for k in table} == table


def test_dispatch_minimum_sizes_match_reference():
    """The "min" column of reference §2 for the implemented ioctls."""
    from core.dispatch import OPS

    want = {0x80: 8, 0x81: 12, 0x82: 24, 0x83: 40, 0x84: 32, 0x85: 40, 0x86: 24, 0x87: 24,
            0x88: 12, 0x89: 24, 0x8A: 32}
    assert {nr: OPS[nr].min_size for nr in want} == want
