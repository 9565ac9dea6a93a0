"""Unit tests of core's devices, VFIO cdev, HWPT and DMA rules, no mount.

Reference sections: §4 (object model), §8 (attach), §9.1 (HWPT_ALLOC),
§9.2 (GET_HW_INFO), §11.3 (VFIO cdev); DESIGN.md (device DMA).
"""
import errno
import struct

import pytest

from core import uapi
from core.iommu.dma import REQ, REPLY
from core.topology import Topology, parse_bdf
from core.uapi import ffi
from devfs.client import Buffer

from corekit import Kit, addr, dma_request, new

PLAIN = "0000:00:03.0"
ACCEL = "0000:00:04.0"
BR0, BR1 = "0000:01:00.0", "0000:01:01.0"
MB = 1 << 20


@pytest.fixture
def kit():
    k = Kit()
    yield k
    k.close()


def dma(kit, name, op, iova, length=0, data=b"", pasid=None):
    flags = 1 if pasid is not None else 0
    req = REQ.pack(b"IODM", op, flags, pasid or 0, iova, length, 0) + data
    rep = dma_request(kit.emu, kit.emu.devices[name], kit.caller, req)
    magic, status, moved, _, fault = REPLY.unpack_from(rep)
    assert magic == b"IODM"
    return status, moved, fault, rep[REPLY.size:]


# -- topology -------------------------------------------------------------------
def test_builtin_topology_rids_groups_and_nodes():
    t = Topology.builtin()
    by = {d.name: d for d in t.devices}
    assert [d.vfio for d in t.devices] == [f"vfio{i}" for i in range(7)]
    assert by[PLAIN].rid == 0x18 and by[ACCEL].rid == 0x20
    assert by[BR0].rid == by[BR1].rid == parse_bdf("0000:00:1e.0") == 0xF0
    assert by[BR0].group == by[BR1].group != by[PLAIN].group
    m = by["mdev0"]
    assert m.rid == by[ACCEL].rid and m.default_pasid == 1 and m.group not in (by[ACCEL].group,)
    assert by[ACCEL].pasid_bits == 20 and by[PLAIN].pasid_bits == 0


@pytest.mark.parametrize("doc", [
    '[[device]]\nname = "zz"\n',
    '[[device]]\nname = "0000:00:01.0"\n[[device]]\nname = "0000:00:01.0"\n',
    '[[device]]\nname = "0000:00:01.0"\n[[mdev]]\nname="m"\nparent="0000:00:01.0"\ndefault_pasid=1\n',
    '[iommu]\naddress_width = 40\n',
])
def test_bad_topology_is_refused(doc):
    with pytest.raises(ValueError):
        Topology.from_string(doc)


# -- BIND (§11.3) -----------------------------------------------------------------
def test_bind_rules_in_order(kit):
    vf = kit.open_vfio(PLAIN)
    b = new("vfio_device_bind_iommufd", iommufd=7)
    info = new("vfio_device_info")
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_GET_INFO, info) == errno.EINVAL  # before bind
    b.argsz = 15
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b) == errno.EINVAL
    big = ffi.new("char[32]")
    struct.pack_into("<IIiIQQ", ffi.buffer(big), 0, 32, 0, 7, 0, 0, 1)
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, ffi.cast("struct vfio_device_bind_iommufd *", big)) == errno.E2BIG
    b.argsz = 24
    b.iommufd = -1
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b) == errno.EINVAL
    b.iommufd, b.flags = 7, 2
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b) == errno.EINVAL
    b.flags = 1  # TOKEN: the emulated driver has no VF token
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b) == errno.EINVAL
    b.flags, b.iommufd = 0, 9  # an fd the transport could not resolve
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b) == errno.EBADF
    b.iommufd = 7
    kit.vfio(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b)
    assert b.out_devid == 1
    assert kit.destroy_err(1) == errno.EBUSY          # DEVICE: unbind by close only
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_BIND_IOMMUFD, b) == errno.EINVAL  # already bound
    vf2 = kit.open_vfio(PLAIN)
    assert kit.vfio_err(vf2, uapi.VFIO_DEVICE_BIND_IOMMUFD, new("vfio_device_bind_iommufd", iommufd=7)) == errno.EBUSY


def test_bind_unreadable_is_efault_and_unbind_on_close(kit):
    from core.mm.usermem import MemArg
    from core.errors import UapiError

    vf = kit.open_vfio(PLAIN)
    with pytest.raises(UapiError) as e:
        vf.ioctl(kit.caller, uapi.VFIO_DEVICE_BIND_IOMMUFD, MemArg(kit.caller.mem, 8))
    assert e.value.errno == errno.EFAULT
    vf, dev_id = kit.bind(PLAIN)
    vf.release()
    assert kit.emu.devices[PLAIN].bound is None
    assert kit.destroy_err(dev_id) == errno.ENOENT
    vf, dev_id2 = kit.bind(PLAIN)          # the device can be bound again
    assert dev_id2 == dev_id


def test_vfio_other_uid_is_eacces(kit):
    from core.caller import Caller
    from core.mm.usermem import MemArg
    from core.errors import UapiError

    vf = kit.open_vfio(PLAIN)
    other = Caller(kit.caller.tid, kit.caller.uid + 1, 0)
    with pytest.raises(UapiError) as e:
        vf.ioctl(other, uapi.VFIO_DEVICE_GET_INFO, MemArg(other.mem, 8))
    assert e.value.errno == errno.EACCES


def test_get_info(kit):
    vf, _ = kit.bind(PLAIN)
    info = new("vfio_device_info", cap_offset=0x55, pad=0x77)
    kit.vfio(vf, uapi.VFIO_DEVICE_GET_INFO, info)
    assert (info.flags, info.num_regions, info.num_irqs, info.cap_offset) == (3, 9, 5, 0)
    assert info.pad == 0                         # min(argsz, 24) bytes written (vfio-device.md §3.1)
    info.argsz, info.pad, info.cap_offset = 20, 0x77, 0x55
    kit.vfio(vf, uapi.VFIO_DEVICE_GET_INFO, info)
    assert (info.cap_offset, info.pad) == (0, 0x77)   # a 20-byte caller gets 20 bytes
    info.argsz = 16
    kit.vfio(vf, uapi.VFIO_DEVICE_GET_INFO, info)
    assert info.cap_offset == 0                  # 16 bytes: up to num_irqs
    info.argsz = 15
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_GET_INFO, info) == errno.EINVAL
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_IOEVENTFD, info) == errno.ENOTTY


# -- ATTACH / DETACH (§8, §11.3) -----------------------------------------------------
def test_attach_ioas_makes_auto_hwpt_reused_and_freed(kit):
    ioas = kit.ioas()
    vf0, d0 = kit.bind(BR0)
    vf1, d1 = kit.bind(BR1)
    h = kit.attach(vf0, ioas)
    assert h == 4
    assert kit.attach(vf1, ioas) == h            # a compatible auto domain is reused
    assert kit.destroy_err(h) == errno.EBUSY
    assert kit.destroy_err(ioas) == errno.EBUSY
    det = new("vfio_device_detach_iommufd_pt")
    kit.vfio(vf0, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, det)
    assert kit.destroy_err(h) == errno.EBUSY    # still used by the peer
    kit.vfio(vf1, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, det)
    assert kit.destroy_err(h) == errno.ENOENT   # auto HWPT gone with its last device
    kit.destroy(ioas)


def test_attach_errors(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)
    a = new("vfio_device_attach_iommufd_pt", pt_id=99)
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.ENOENT
    a.pt_id = dev_id
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL
    a.pt_id, a.argsz = ioas, 11
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL
    a.argsz, a.flags = 16, 2
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL
    a.flags = uapi.VFIO_DEVICE_ATTACH_PASID   # the plain device has no PASID
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EOPNOTSUPP
    det = new("vfio_device_detach_iommufd_pt", flags=uapi.VFIO_DEVICE_DETACH_PASID)
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, det) == errno.EOPNOTSUPP
    det.flags, det.argsz = 0, 7
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, det) == errno.EINVAL
    det.argsz = 12
    assert kit.vfio(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, det) == 0   # nothing attached: fine


def test_pasid_attach_rules(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(ACCEL)
    plain = kit.hwpt(dev_id, ioas)
    pasid_hwpt = kit.hwpt(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    a = new("vfio_device_attach_iommufd_pt", flags=uapi.VFIO_DEVICE_ATTACH_PASID, pt_id=ioas, pasid=5)
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL   # IOAS for a PASID
    a.pt_id = plain
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL   # not PASID-compatible
    a.pt_id, a.pasid = pasid_hwpt, 1 << 20
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL   # beyond the width
    a.pasid, a.argsz = 5, 12
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL   # argsz < 16 with PASID
    assert kit.attach(vf, pasid_hwpt, pasid=5) == pasid_hwpt
    # With a PASID attached, the RID needs a PASID-compatible HWPT too.
    a = new("vfio_device_attach_iommufd_pt", pt_id=plain)
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL
    assert kit.attach(vf, pasid_hwpt) == pasid_hwpt


def test_group_peers_must_share_the_hwpt(kit):
    ioas = kit.ioas()
    vf0, d0 = kit.bind(BR0)
    vf1, d1 = kit.bind(BR1)
    h0 = kit.hwpt(d0, ioas)
    h1 = kit.hwpt(d1, ioas)
    kit.attach(vf0, h0)
    a = new("vfio_device_attach_iommufd_pt", pt_id=h1)
    assert kit.vfio_err(vf1, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL
    assert kit.attach(vf1, h0) == h0


def test_attach_reserved_collision_leaves_nothing(kit):
    ioas = kit.ioas()
    buf = Buffer(2 * MB)
    kit.map(ioas, buf.va, 2 * MB, iova=0xFEE00000)     # covers the MSI window
    vf, dev_id = kit.bind(PLAIN)
    a = new("vfio_device_attach_iommufd_pt", pt_id=ioas)
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EADDRINUSE
    assert a.pt_id == ioas                               # nothing written back
    assert not kit.emu.devices[PLAIN].bound.attachments
    assert kit.destroy_err(3) == errno.ENOENT            # the auto HWPT was not kept
    assert kit.hwpt(dev_id, ioas) == 3                   # and its ID was released


def test_replace_frees_old_auto_hwpt(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)
    auto = kit.attach(vf, ioas)
    manual = kit.hwpt(dev_id, ioas)
    assert kit.attach(vf, manual) == manual
    assert kit.destroy_err(auto) == errno.ENOENT
    assert kit.destroy_err(manual) == errno.EBUSY


# -- HWPT_ALLOC (§9.1) -----------------------------------------------------------
def test_hwpt_alloc_order(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(BR0)               # no dirty tracking on this one
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, __reserved=1)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, data_len=8)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EINVAL
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, data_type=1)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EINVAL
    c = new("iommu_hwpt_alloc", dev_id=ioas, pt_id=ioas)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.ENOENT
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=77)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EINVAL   # unknown pt_id: EINVAL, not ENOENT
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=dev_id)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EINVAL
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, flags=0x10)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, flags=5)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP   # FAULT_ID_VALID | NEST_PARENT
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, flags=uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID, fault_id=ioas)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.ENOENT
    assert c.out_hwpt_id == 0
    parent = kit.hwpt(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert parent == 3                         # the aborted HWPT's ID was released
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=parent, flags=uapi.IOMMU_HWPT_ALLOC_NEST_PARENT, data_type=1, data_len=24)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=parent)
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP   # nested without data
    assert kit.destroy_err(ioas) == errno.EBUSY
    kit.destroy(parent)
    kit.destroy(ioas)


def test_hwpt_alloc_min_size_is_24(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)
    c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, data_type=0xAA, data_len=0xBB)
    c.size = 24
    kit.ioctl(uapi.IOMMU_HWPT_ALLOC, c)         # fields past 24 bytes read as zero
    assert c.out_hwpt_id == 3
    assert (c.data_type, c.data_len) == (0xAA, 0xBB)   # and are not written back
    c.size = 23
    assert kit.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EINVAL


# -- GET_HW_INFO (§9.2) -------------------------------------------------------------
def test_get_hw_info(kit):
    vf, dev_id = kit.bind(ACCEL)
    buf = ffi.new("char[16]", b"\xff" * 16)
    c = new("iommu_hw_info", dev_id=dev_id, data_len=16, data_uptr=addr(buf))
    kit.ioctl(uapi.IOMMU_GET_HW_INFO, c)
    assert c.data_len == 0 and c.out_data_type == 0
    assert c.out_max_pasid_log2 == 20
    assert c.out_capabilities == (uapi.IOMMU_HW_CAP_DIRTY_TRACKING | uapi.IOMMU_HW_CAP_PCI_PASID_EXEC
                                  | uapi.IOMMU_HW_CAP_PCI_PASID_PRIV)
    assert ffi.buffer(buf)[:] == bytes(16)      # the user buffer is zero-filled
    vf2, dev2 = kit.bind(BR0)
    c = new("iommu_hw_info", dev_id=dev2)
    kit.ioctl(uapi.IOMMU_GET_HW_INFO, c)
    assert c.out_max_pasid_log2 == 0
    assert c.out_capabilities == uapi.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    assert kit.err(uapi.IOMMU_GET_HW_INFO, new("iommu_hw_info", dev_id=dev_id, flags=2)) == errno.EOPNOTSUPP
    r = new("iommu_hw_info", dev_id=dev_id)
    r.__reserved[1] = 1
    assert kit.err(uapi.IOMMU_GET_HW_INFO, r) == errno.EOPNOTSUPP
    assert kit.err(uapi.IOMMU_GET_HW_INFO, new("iommu_hw_info", dev_id=99)) == errno.ENOENT
    assert kit.err(uapi.IOMMU_GET_HW_INFO, new("iommu_hw_info", dev_id=dev_id, flags=1, out_data_type=1)) == errno.EOPNOTSUPP
    bad = new("iommu_hw_info", dev_id=dev_id, data_len=16, data_uptr=8)
    assert kit.err(uapi.IOMMU_GET_HW_INFO, bad) == errno.EFAULT


# -- DMA -------------------------------------------------------------------------------
def test_dma_lands_in_memory_and_faults_are_reported(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)
    assert dma(kit, PLAIN, 2, 0x1000, 4, b"abcd")[0] == -errno.ENODEV
    kit.attach(vf, ioas)
    buf = Buffer(4 * MB)
    kit.map(ioas, buf.va, 4 * MB, iova=0x40000000)
    st, moved, _, _ = dma(kit, PLAIN, 2, 0x40000000 + 0x1ffffe, 4, b"WXYZ")   # across a 2 MiB boundary
    assert (st, moved) == (0, 4)
    assert buf[0x1ffffe:0x200002] == b"WXYZ"
    buf[100:105] = b"hello"
    st, moved, _, data = dma(kit, PLAIN, 1, 0x40000000 + 100, 5)
    assert (st, data) == (0, b"hello")
    st, moved, fault, _ = dma(kit, PLAIN, 1, 0x40000000 + 4 * MB - 2, 4)
    assert (st, moved, fault) == (-errno.EFAULT, 0, 0x40000000 + 4 * MB)
    info = kit.emu.devices[PLAIN].info()
    assert info["faults"] == 2 and info["last_fault"]["iova"] == 0x40000000 + 4 * MB
    # A read-only mapping refuses device writes with EACCES.
    ro = Buffer(MB)
    kit.map(ioas, ro.va, MB, iova=0x80000000, flags=uapi.IOMMU_IOAS_MAP_READABLE)
    st, moved, fault, _ = dma(kit, PLAIN, 2, 0x80000000 + 8, 2, b"no")
    assert (st, fault) == (-errno.EACCES, 0x80000000 + 8)
    assert ro[8:10] == b"\0\0"
    assert dma(kit, PLAIN, 1, 0x80000000, 2)[0] == 0


@pytest.mark.parametrize("frame", [
    b"", b"IODM", REQ.pack(b"XXXX", 1, 0, 0, 0, 0, 0), REQ.pack(b"IODM", 3, 0, 0, 0, 0, 0),
    REQ.pack(b"IODM", 1, 4, 0, 0, 0, 0), REQ.pack(b"IODM", 1, 0, 0, 0, 0, 1),
    REQ.pack(b"IODM", 2, 0, 0, 0, 8, 0) + b"short", REQ.pack(b"IODM", 1, 0, 0, 0, 4, 0) + b"xxxx",
    REQ.pack(b"IODM", 1, 0, 0, 0, 1 << 30, 0),
])
def test_dma_bad_frames_are_einval(kit, frame):
    rep = dma_request(kit.emu, kit.emu.devices[PLAIN], kit.caller, frame)
    assert REPLY.unpack_from(rep)[1] == -errno.EINVAL


def test_close_with_device_bound_keeps_context_until_unbind(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)
    kit.attach(vf, ioas)
    buf = Buffer(MB)
    kit.map(ioas, buf.va, MB, iova=0x100000)
    kit.iommufd.release()
    assert dma(kit, PLAIN, 2, 0x100000, 3, b"yes")[0] == 0   # the bound device keeps it alive
    assert buf[0:3] == b"yes"
    vf.release()
    assert kit.ctx.closed and not kit.ctx.objects and len(kit.ctx.owners) == 0
    assert kit.emu.devices[PLAIN].bound is None


def test_feature_core_checks(kit):
    vf, _ = kit.bind(PLAIN)
    f = ffi.new("uint32_t[4]", [16, 0, 0, 0])
    p = ffi.cast("struct vfio_device_info *", f)   # any buffer: FEATURE reads argsz and flags
    f[0] = 7
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_FEATURE, p) == errno.EINVAL
    f[0], f[1] = 16, 1 << 19
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_FEATURE, p) == errno.EINVAL
    f[1] = (1 << 16) | (1 << 17) | 1
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_FEATURE, p) == errno.EINVAL
    f[1] = (1 << 18) | 1
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_FEATURE, p) == errno.ENOTTY


def test_close_frees_page_tables_and_pidfds():
    from cext.pagetable import live_tables

    before = live_tables()
    kit = Kit()
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)
    kit.attach(vf, kit.hwpt(dev_id, ioas))
    kit.attach(kit.bind(BR0)[0], ioas)
    buf = Buffer(4 * MB)
    kit.map(ioas, buf.va, 4 * MB, iova=1 << 40)
    assert live_tables() > before
    assert len(kit.ctx.owners) == 1
    owner = next(iter(kit.ctx.owners.by_tgid.values()))
    kit.close()
    assert live_tables() == before
    assert owner.pidfd == -1 and owner.maps_fd == -1
    assert kit.ctx.closed and not kit.ctx.objects


def test_dirty_tracking_hwpt_refuses_a_device_without_it(kit):
    # The Intel driver's domain compatibility check (no SSADS: EINVAL), as
    # the selftest mock's attach_dev refuses a NO_DIRTY device.
    ioas = kit.ioas()
    vf, dev_id = kit.bind(PLAIN)                 # dirty_tracking = true
    dirty = kit.hwpt(dev_id, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    assert kit.attach(vf, dirty) == dirty
    vf2, dev2 = kit.bind(BR0)                    # no dirty tracking
    a = new("vfio_device_attach_iommufd_pt", pt_id=dirty)
    assert kit.vfio_err(vf2, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL
    auto = kit.attach(vf2, ioas)
    assert auto != dirty
    assert kit.vfio_err(vf2, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL
    a = new("vfio_device_attach_iommufd_pt", pt_id=ioas)
    kit.vfio(vf2, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
    assert a.pt_id == auto                        # the old attachment stayed
