"""Struct layouts and numbers against the reference's tables: every struct's
sizeof and every field's offset and size (reference §5, §11.2, §11.4, §12,
and the project's own structs of docs/nodes.md), and the ioctl numbers (§2,
§11.1, §12, docs/nodes.md "Private ioctls").

One table, LAYOUTS, and every declaration of these structs in the project
held against it:

- core's cffi declarations (core/uapi.py) and the struct.Struct formats core
  and the Python client pack and unpack;
- the C test clients' one header (tests/c/uapi.h) and the preload shim's
  (cext/preload_uapi.h), compiled with gcc into a program that prints
  sizeof/offsetof of every struct and field they declare.
"""
import os
import re
import struct
import subprocess

import pytest

from core import uapi
from core.uapi import ffi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# struct -> (sizeof, [(field, offset, size), ...]) as the reference gives them;
# "iommu_test_cmd.<member>": a member of iommu_test_cmd's union (offsets
# relative to the member).
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
    # vfio-device.md §2.3-§2.6 (the device half). Only the fixed parts: core
    # declares no flexible arrays (vfio_irq_set's data at 20, the hot reset
    # arrays at 12), which the C header has but this table does not hold.
    "vfio_region_info": (32, [("argsz", 0, 4), ("flags", 4, 4), ("index", 8, 4), ("cap_offset", 12, 4),
                              ("size", 16, 8), ("offset", 24, 8)]),
    "vfio_irq_info": (16, [("argsz", 0, 4), ("flags", 4, 4), ("index", 8, 4), ("count", 12, 4)]),
    "vfio_irq_set": (20, [("argsz", 0, 4), ("flags", 4, 4), ("index", 8, 4), ("start", 12, 4),
                          ("count", 16, 4)]),
    "vfio_pci_dependent_device": (8, [("devid", 0, 4), ("segment", 4, 2), ("bus", 6, 1), ("devfn", 7, 1)]),
    "vfio_pci_hot_reset_info": (12, [("argsz", 0, 4), ("flags", 4, 4), ("count", 8, 4)]),
    "vfio_pci_hot_reset": (12, [("argsz", 0, 4), ("flags", 4, 4), ("count", 8, 4)]),
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
    "iommu_hwpt_set_dirty_tracking": (16, [("size", 0, 4), ("flags", 4, 4), ("hwpt_id", 8, 4),
                                           ("__reserved", 12, 4)]),
    "iommu_hwpt_get_dirty_bitmap": (48, [("size", 0, 4), ("hwpt_id", 4, 4), ("flags", 8, 4),
                                         ("__reserved", 12, 4), ("iova", 16, 8), ("length", 24, 8),
                                         ("page_size", 32, 8), ("data", 40, 8)]),
    "iommu_hwpt_invalidate": (32, [("size", 0, 4), ("hwpt_id", 4, 4), ("data_uptr", 8, 8),
                                   ("data_type", 16, 4), ("entry_len", 20, 4), ("entry_num", 24, 4),
                                   ("__reserved", 28, 4)]),
    "iommu_viommu_alloc": (40, [("size", 0, 4), ("flags", 4, 4), ("type", 8, 4), ("dev_id", 12, 4),
                                ("hwpt_id", 16, 4), ("out_viommu_id", 20, 4), ("data_len", 24, 4),
                                ("__reserved", 28, 4), ("data_uptr", 32, 8)]),
    "iommu_vdevice_alloc": (24, [("size", 0, 4), ("viommu_id", 4, 4), ("dev_id", 8, 4),
                                 ("out_vdevice_id", 12, 4), ("virt_id", 16, 8)]),
    "iommu_ioas_change_process": (8, [("size", 0, 4), ("__reserved", 4, 4)]),
    "iommu_hw_queue_alloc": (40, [("size", 0, 4), ("flags", 4, 4), ("viommu_id", 8, 4), ("type", 12, 4),
                                  ("index", 16, 4), ("out_hw_queue_id", 20, 4),
                                  ("nesting_parent_iova", 24, 8), ("length", 32, 8)]),
    "iommu_veventq_alloc": (32, [("size", 0, 4), ("flags", 4, 4), ("viommu_id", 8, 4),
                                 ("type", 12, 4), ("veventq_depth", 16, 4),
                                 ("out_veventq_id", 20, 4), ("out_veventq_fd", 24, 4),
                                 ("__reserved", 28, 4)]),
    # The project's own (docs/nodes.md: "Ioctls that return file descriptors", "The
    # driver side", "Frames", "Device DMA"); a flexible array member has size None.
    "iommufs_fd_path": (264, [("size", 0, 4), ("index", 4, 4), ("path", 8, 256)]),
    "iommufs_pasid": (16, [("size", 0, 4), ("flags", 4, 4), ("pasid", 8, 4), ("__reserved", 12, 4)]),
    "iommufs_sva_bind": (24, [("size", 0, 4), ("flags", 4, 4), ("pid", 8, 4), ("out_handle", 12, 4),
                              ("out_pasid", 16, 4), ("__reserved", 20, 4)]),
    "iommufs_sva": (16, [("size", 0, 4), ("handle", 4, 4), ("out_pasid", 8, 4), ("__reserved", 12, 4)]),
    "iommufs_drv_event": (32, [("type", 0, 4), ("handle", 4, 4), ("pasid", 8, 4), ("pid", 12, 4),
                               ("addr", 16, 8), ("perm", 24, 4), ("__reserved", 28, 4)]),
    "iommufs_frame_request": (16, [("magic", 0, 4), ("cmd", 4, 4), ("arg_len", 8, 4), ("flags", 12, 4),
                                   ("arg", 16, None)]),
    "iommufs_frame_reply": (16, [("magic", 0, 4), ("result", 4, 4), ("arg_len", 8, 4),
                                 ("extra_len", 12, 4), ("arg", 16, None)]),
    "iommufs_dma_request": (32, [("magic", 0, 4), ("op", 4, 4), ("flags", 8, 4), ("pasid", 12, 4),
                                 ("iova", 16, 8), ("length", 24, 4), ("__reserved", 28, 4),
                                 ("data", 32, None)]),
    "iommufs_dma_reply": (24, [("magic", 0, 4), ("status", 4, 4), ("moved", 8, 4), ("__reserved", 12, 4),
                               ("fault_iova", 16, 8), ("data", 24, None)]),
}

# §12: the members of iommu_test_cmd's union (at 16, 48 bytes): sizeof and
# fields, offsets relative to the member.
TEST_CMD_UNION = {
    "add_reserved": (16, [("start", 0, 8), ("length", 8, 8)]),
    "mock_domain": (12, [("out_stdev_id", 0, 4), ("out_hwpt_id", 4, 4), ("out_idev_id", 8, 4)]),
    "mock_domain_flags": (16, [("out_stdev_id", 0, 4), ("out_hwpt_id", 4, 4), ("out_idev_id", 8, 4),
                               ("dev_flags", 12, 4)]),
    "mock_domain_replace": (4, [("pt_id", 0, 4)]),
    "check_map": (24, [("iova", 0, 8), ("length", 8, 8), ("uptr", 16, 8)]),
    "check_refs": (24, [("length", 0, 8), ("uptr", 8, 8), ("refs", 16, 4)]),
    "create_access": (8, [("out_access_fd", 0, 4), ("flags", 4, 4)]),
    "destroy_access_pages": (4, [("access_pages_id", 0, 4)]),
    "access_pages": (32, [("flags", 0, 4), ("out_access_pages_id", 4, 4), ("iova", 8, 8),
                          ("length", 16, 8), ("uptr", 24, 8)]),
    "access_rw": (32, [("iova", 0, 8), ("length", 8, 8), ("uptr", 16, 8), ("flags", 24, 4)]),
    "memory_limit": (4, [("limit", 0, 4)]),
    "access_replace_ioas": (4, [("ioas_id", 0, 4)]),
    "dirty": (48, [("flags", 0, 4), ("iova", 8, 8), ("length", 16, 8), ("page_size", 24, 8),
                   ("uptr", 32, 8), ("out_nr_dirty", 40, 8)]),
    "check_iotlb": (8, [("id", 0, 4), ("iotlb", 4, 4)]),
    "trigger_iopf": (24, [("dev_id", 0, 4), ("pasid", 4, 4), ("grpid", 8, 4), ("perm", 12, 4),
                          ("addr", 16, 8)]),
    "check_dev_cache": (8, [("id", 0, 4), ("cache", 4, 4)]),
    "trigger_vevent": (4, [("dev_id", 0, 4)]),
    "pasid_attach": (8, [("pasid", 0, 4), ("pt_id", 4, 4)]),
    "pasid_replace": (8, [("pasid", 0, 4), ("pt_id", 4, 4)]),
    "pasid_detach": (4, [("pasid", 0, 4)]),
    "pasid_check": (8, [("pasid", 0, 4), ("hwpt_id", 4, 4)]),
    "dmabuf_get": (8, [("length", 0, 4), ("open_flags", 4, 4)]),
    "dmabuf_revoke": (8, [("dmabuf_fd", 0, 4), ("revoked", 4, 4)]),
}
LAYOUTS["iommu_test_cmd"] = (72, [("size", 0, 4), ("op", 4, 4), ("id", 8, 4), ("__reserved", 12, 4),
                                  *[(m, 16, size) for m, (size, _) in TEST_CMD_UNION.items()],
                                  ("last", 64, 4)])
LAYOUTS.update({f"iommu_test_cmd.{m}": layout for m, layout in TEST_CMD_UNION.items()})


def _field_size(t):
    # An open array (flexible array member) has no size of its own.
    return None if t.kind == "array" and t.length is None else ffi.sizeof(t)


def _cffi_type(name):
    """The cffi type of LAYOUTS entry ``name``; None if core does not declare it."""
    outer, _, member = name.partition(".")
    t = ffi.typeof(f"struct {outer}")
    if t.fields is None:            # cffi's answer for a struct never declared
        return None
    return dict(t.fields)[member].type if member else t


# Layouts core and the Python client hold as struct.Struct formats (no
# padding, "<"), field names in format order.
def _struct_formats():
    from core.vfio import compat
    from core.iommu import driver
    from core.iommufd import fault, ioas
    from core import wire
    from devfs import client

    return [
        ("core.iommufd.fault.RECORD", fault.RECORD, "iommu_hwpt_pgfault"),
        ("core.iommufd.fault.RESPONSE", fault.RESPONSE, "iommu_hwpt_page_response"),
        ("core.iommu.driver.EVENT", driver.EVENT, "iommufs_drv_event"),
        ("core.wire.IODM_REQUEST", wire.IODM_REQUEST, "iommufs_dma_request"),
        ("core.wire.IODM_REPLY", wire.IODM_REPLY, "iommufs_dma_reply"),
        ("core.wire.IOFS_REQUEST", wire.IOFS_REQUEST, "iommufs_frame_request"),
        ("core.wire.IOFS_REPLY", wire.IOFS_REPLY, "iommufs_frame_reply"),
        ("core.vfio.compat._CAP_HEADER", compat._CAP_HEADER, "vfio_info_cap_header"),
        ("core.vfio.compat._RANGE", compat._RANGE, "vfio_iova_range"),
        ("core.iommufd.ioas._RANGE", ioas._RANGE, "iommu_iova_range"),
        ("devfs.client.PGFAULT", client.PGFAULT, "iommu_hwpt_pgfault"),
    ]


def _format_layout(st):
    """(size, [(offset, size), ...]) of a "<" struct.Struct, one item per
    field ("4s" is one field)."""
    assert st.format.startswith("<")
    out, off = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", st.format[1:]):
        items = [f"{count}{code}"] if code == "s" else [code] * int(count or 1)
        for item in items:
            size = struct.calcsize("<" + item)
            out.append((off, size))
            off += size
    return st.size, out


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_core_layout_matches_reference(name):
    """Core's cffi declaration, or (for what core packs with struct.Struct
    only) at least one struct.Struct format, per LAYOUTS entry."""
    size, fields = LAYOUTS[name]
    t = _cffi_type(name)
    if t is None:
        assert name in {n for _, _, n in _struct_formats()}, f"core declares no {name}"
        return
    assert ffi.sizeof(t) == size
    got = {f: (fi.offset, _field_size(fi.type)) for f, fi in t.fields}
    assert got == {f: (o, s) for f, o, s in fields}


@pytest.mark.parametrize("where, st, name", _struct_formats(), ids=[w for w, _, _ in _struct_formats()])
def test_struct_formats_match_reference(where, st, name):
    size, fields = LAYOUTS[name]
    want = [(o, s) for _, o, s in fields if s is not None]
    assert _format_layout(st) == (size, want), where


# -- numbers -------------------------------------------------------------------------------

# §2, §11.1 and docs/nodes.md "Private ioctls".
IOCTL_NUMBERS = {
    "IOMMU_DESTROY": 0x3B80, "IOMMU_IOAS_ALLOC": 0x3B81, "IOMMU_IOAS_ALLOW_IOVAS": 0x3B82,
    "IOMMU_IOAS_COPY": 0x3B83, "IOMMU_IOAS_IOVA_RANGES": 0x3B84, "IOMMU_IOAS_MAP": 0x3B85,
    "IOMMU_IOAS_UNMAP": 0x3B86, "IOMMU_OPTION": 0x3B87, "IOMMU_VFIO_IOAS": 0x3B88,
    "IOMMU_HWPT_ALLOC": 0x3B89, "IOMMU_GET_HW_INFO": 0x3B8A, "IOMMU_FAULT_QUEUE_ALLOC": 0x3B8E,
    "IOMMU_IOAS_MAP_FILE": 0x3B8F, "IOMMU_VEVENTQ_ALLOC": 0x3B93, "IOMMU_HW_QUEUE_ALLOC": 0x3B94,
    "IOMMU_TEST_CMD": 0x3BA0,
    "VFIO_GET_API_VERSION": 0x3B64, "VFIO_DEVICE_GET_INFO": 0x3B6B, "VFIO_IOMMU_GET_INFO": 0x3B70,
    "VFIO_DEVICE_GET_REGION_INFO": 0x3B6C, "VFIO_DEVICE_GET_IRQ_INFO": 0x3B6D, "VFIO_DEVICE_SET_IRQS": 0x3B6E,
    "VFIO_DEVICE_RESET": 0x3B6F, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": 0x3B70,
    "VFIO_DEVICE_PCI_HOT_RESET": 0x3B71,
    "VFIO_IOMMU_MAP_DMA": 0x3B71, "VFIO_IOMMU_UNMAP_DMA": 0x3B72, "VFIO_DEVICE_FEATURE": 0x3B75,
    "VFIO_IOMMU_DIRTY_PAGES": 0x3B75,
    "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76, "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77,
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
    "VFIO_CHECK_EXTENSION": 0x3B65, "VFIO_SET_IOMMU": 0x3B66,
    "IOMMUFS_NULL": 0xF500, "IOMMUFS_SYNC_CLOSE": 0xF501, "IOMMUFS_FD_PATH": 0xF503,
    "IOMMUFS_PASID_ALLOC": 0xF510, "IOMMUFS_PASID_FREE": 0xF511, "IOMMUFS_SVA_BIND": 0xF512,
    "IOMMUFS_SVA_UNBIND": 0xF513, "IOMMUFS_SVA_GET_PASID": 0xF514,
}

# §12: IOMMU_TEST_CMD ops.
TEST_OPS = {f"IOMMU_TEST_OP_{n}": i for i, n in enumerate(
    ["ADD_RESERVED", "MOCK_DOMAIN", "MD_CHECK_MAP", "MD_CHECK_REFS", "CREATE_ACCESS",
     "DESTROY_ACCESS_PAGES", "ACCESS_PAGES", "ACCESS_RW", "SET_TEMP_MEMORY_LIMIT",
     "MOCK_DOMAIN_REPLACE", "ACCESS_REPLACE_IOAS", "MOCK_DOMAIN_FLAGS", "DIRTY", "MD_CHECK_IOTLB",
     "TRIGGER_IOPF", "DEV_CHECK_CACHE", "TRIGGER_VEVENT", "PASID_ATTACH", "PASID_REPLACE",
     "PASID_DETACH", "PASID_CHECK_HWPT", "DMABUF_GET", "DMABUF_REVOKE"], start=1)}

# §11.4: extension / IOMMU type numbers, flags and capability IDs.
COMPAT_VALUES = {
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


def test_ioctl_numbers_match_reference():
    table = {**IOCTL_NUMBERS, **TEST_OPS}
    assert {k: getattr(uapi, k) for k in table} == table


def test_vfio_compat_values_match_reference():
    assert {k: getattr(uapi, k) for k in COMPAT_VALUES} == COMPAT_VALUES


def test_dispatch_minimum_sizes_match_reference():
    """The "min" column of reference §2 for the implemented ioctls."""
    from core.iommufd.dispatch import OPS

    want = {0x80: 8, 0x81: 12, 0x82: 24, 0x83: 40, 0x84: 32, 0x85: 40, 0x86: 24, 0x87: 24,
            0x88: 12, 0x89: 24, 0x8A: 32, 0x8B: 16, 0x8C: 48, 0x8D: 32, 0x8E: 16, 0x8F: 40, 0x90: 24, 0x91: 24,
            0x92: 8, 0x93: 28, 0x94: 40, 0xA0: 68}
    assert {nr: OPS[nr].min_size for nr in want} == want


# -- the C headers -------------------------------------------------------------------------

# The headers C code of the project includes for the uAPI: the C test
# clients' (tests/c/*.c) and the preload shim's (cext/preload.c).
C_HEADERS = ["tests/c/uapi.h", "cext/preload_uapi.h"]


def _declared_structs(text):
    """Names of the structs a header defines (``struct NAME {`` at a line's start)."""
    return re.findall(r"^struct (\w+) \{", text, re.M)


def _c_program(header, structs):
    """A C program printing "S NAME SIZEOF", "F NAME FIELD OFFSET SIZE|-" for
    every LAYOUTS entry of ``structs`` (union members of iommu_test_cmd
    too) and "N MACRO VALUE" for every number of the tables the header
    defines."""
    lines = ["#include <stddef.h>", "#include <stdio.h>", f'#include "{header}"',
             "#define SZ(x) sizeof(x)", "int main(void)", "{"]
    for name in structs:
        outer, _, member = name.partition(".")
        obj = f"((struct {outer} *)0)->{member}" if member else f"*(struct {outer} *)0"
        base = f"offsetof(struct {outer}, {member})" if member else "0"
        lines.append(f'    printf("S {name} %zu\\n", SZ({obj}));')
        for field, _, size in LAYOUTS[name][1]:
            path = f"{member}.{field}" if member else field
            off = f"offsetof(struct {outer}, {path}) - {base}"
            if size is None:
                lines.append(f'    printf("F {name} {field} %zu -\\n", {off});')
            else:
                lines.append(f'    printf("F {name} {field} %zu %zu\\n", {off}, '
                             f'SZ(((struct {outer} *)0)->{path}));')
    for macro in {**IOCTL_NUMBERS, **TEST_OPS, **COMPAT_VALUES}:
        lines += [f"#ifdef {macro}", f'    printf("N {macro} %lu\\n", (unsigned long)({macro}));',
                  "#endif"]
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("header", C_HEADERS)
def test_c_header_layouts_match_reference(header, tmp_path):
    """Every struct the header declares is one the reference (or docs/nodes.md)
    defines, and gcc lays it out as LAYOUTS says: sizeof, each field's
    offset and size, iommu_test_cmd's union members; every number it
    defines of the tables above has the reference's value."""
    path = os.path.join(ROOT, header)
    with open(path) as f:
        declared = _declared_structs(f.read())
    assert declared, f"{header} declares no struct"
    unknown = [n for n in declared if n not in LAYOUTS]
    assert not unknown, f"{header} declares structs the reference does not define: {unknown}"
    structs = [n for n in LAYOUTS if n.partition(".")[0] in declared]
    src = tmp_path / "layout.c"
    src.write_text(_c_program(path, structs))
    exe = tmp_path / "layout"
    cc = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-o", str(exe), str(src)],
                        capture_output=True, text=True)
    assert cc.returncode == 0, f"{header} lacks a field of the reference:\n{cc.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    got_sizes, got_fields, got_numbers = {}, {}, {}
    for line in filter(None, out):
        kind, name, *rest = line.split()
        if kind == "S":
            got_sizes[name] = int(rest[0])
        elif kind == "F":
            got_fields.setdefault(name, []).append(
                (rest[0], int(rest[1]), None if rest[2] == "-" else int(rest[2])))
        else:
            got_numbers[name] = int(rest[0])
    assert got_sizes == {n: LAYOUTS[n][0] for n in structs}, header
    assert got_fields == {n: LAYOUTS[n][1] for n in structs}, header
    table = {**IOCTL_NUMBERS, **TEST_OPS, **COMPAT_VALUES}
    assert got_numbers == {k: table[k] for k in got_numbers}, header


def test_c_code_declares_the_uapi_only_in_the_headers():
    """No C test client or the shim declares a uAPI struct of its own: they
    include the checked headers. The shim takes every offset it writes
    from them (offsetof of a checked field)."""
    names = set(LAYOUTS) | {n.partition(".")[0] for n in LAYOUTS}
    sources = [os.path.join("tests", "c", f) for f in sorted(os.listdir(os.path.join(ROOT, "tests", "c")))
               if f.endswith(".c")] + ["cext/preload.c"]
    for rel in sources:
        with open(os.path.join(ROOT, rel)) as f:
            text = f.read()
        assert not set(_declared_structs(text)) & names, rel
    with open(os.path.join(ROOT, "cext", "preload.c")) as f:
        shim = f.read()
    assert '#include "preload_uapi.h"' in shim
    used = re.findall(r"offsetof\(struct (\w+), ([\w.]+)\)", shim)
    assert used
    for outer, path in used:
        member, _, field = path.rpartition(".")
        name = f"{outer}.{member}" if member else outer
        assert field in {f for f, _, _ in LAYOUTS[name][1]}, (outer, path)
