"""Unit tests of the device-centric model (issue 3), core only, no mount.

PASID attach rules (reference §8, §11.3), PASID spaces (seed 003), routing
by {RID, PASID}, groups and RID aliases (seed 001), mdevs (seed 004), SVA
bonds (seed 002) and the driver node's commands (docs/driver-side.md).
Every routing claim is proven by DMA bytes landing (or not) in real memory.
"""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from core import uapi
from core.caller import Caller
from core.iommu.dma import REPLY, REQ
from core.iommu.driver import EVENT
from core.emulator import Emulator
from core.errors import UapiError
from core.iommu.pasid import PasidSpace
from core.topology import Topology
from core.mm.usermem import MemArg
from devfs.client import Buffer

from corekit import Kit, addr, dma_request, new, open_node

PLAIN = "0000:00:03.0"
ACCEL = "0000:00:04.0"
BR0, BR1 = "0000:01:00.0", "0000:01:01.0"
MB = 1 << 20

# Two ENQCMD accelerators (global PASIDs), a PASID device with a tiny space
# of its own (PASIDs 1..3), an mdev of the small one.
MULTI = """
[[device]]
name = "0000:00:04.0"
pasid_bits = 20
enqcmd = true
pri = true
[[device]]
name = "0000:00:05.0"
pasid_bits = 20
enqcmd = true
[[device]]
name = "0000:00:06.0"
pasid_bits = 2
[[mdev]]
name = "mdev9"
parent = "0000:00:06.0"
default_pasid = 3
"""
ENQ1, ENQ2, SMALL = "0000:00:04.0", "0000:00:05.0", "0000:00:06.0"


@pytest.fixture
def kit():
    k = Kit()
    yield k
    k.close()


@pytest.fixture
def multi():
    k = Kit(Topology.from_string(MULTI))
    yield k
    k.close()


def dma(kit, name, op, iova, length=0, data=b"", pasid=None, caller=None):
    flags = 1 if pasid is not None else 0
    req = REQ.pack(b"IODM", op, flags, pasid or 0, iova, length, 0) + data
    rep = dma_request(kit.emu, kit.emu.devices[name], caller or kit.caller, req)
    magic, status, moved, _, fault = REPLY.unpack_from(rep)
    assert magic == b"IODM"
    return status, rep[REPLY.size:]


def write(kit, name, iova, data, pasid=None):
    return dma(kit, name, 2, iova, len(data), data, pasid)[0]


class Driver:
    """A driver node's open file, driven through core (no mount)."""

    def __init__(self, kit, name, caller=None):
        self.kit = kit
        self.caller = caller or kit.caller
        self.f = open_node(kit.emu, f"devices/{name}/driver", self.caller)

    def call(self, cmd, c):
        return self.f.ioctl(self.caller, cmd, MemArg(self.caller.mem, addr(c)))

    def err(self, cmd, c):
        with pytest.raises(UapiError) as e:
            self.call(cmd, c)
        return e.value.errno

    def alloc(self):
        c = new("iommufs_pasid")
        self.call(uapi.IOMMUFS_PASID_ALLOC, c)
        return c.pasid

    def free(self, pasid):
        self.call(uapi.IOMMUFS_PASID_FREE, new("iommufs_pasid", pasid=pasid))

    def bind(self, pid=0):
        c = new("iommufs_sva_bind", pid=pid)
        self.call(uapi.IOMMUFS_SVA_BIND, c)
        return c.out_handle, c.out_pasid

    def unbind(self, handle):
        c = new("iommufs_sva", handle=handle)
        self.call(uapi.IOMMUFS_SVA_UNBIND, c)
        return c.out_pasid

    def events(self, count=1024):
        data = self.f.read(self.caller, count, 0)
        return [EVENT.unpack_from(data, i) for i in range(0, len(data), EVENT.size)]

    def close(self):
        self.f.release()


# -- PasidSpace ------------------------------------------------------------------------
def test_pasid_space_lowest_free_reuse_and_exhaustion():
    s = PasidSpace(2, "t")
    assert [s.alloc(), s.alloc(), s.alloc()] == [1, 2, 3]
    with pytest.raises(UapiError) as e:
        s.alloc()
    assert e.value.errno == errno.ENOSPC
    s.free(2)
    with pytest.raises(UapiError) as e:
        s.free(2)
    assert e.value.errno == errno.ENOENT
    assert s.alloc() == 2
    s.free(3)
    s.free(1)
    assert s.alloc() == 1 and s.alloc() == 3
    assert PasidSpace(0, "none").limit == 1
    with pytest.raises(UapiError):
        PasidSpace(0, "none").alloc()


# -- the driver node: PASID allocation (seed 003) --------------------------------------------
def test_enqcmd_devices_share_the_global_space_others_have_their_own(multi):
    d1, d2, small = Driver(multi, ENQ1), Driver(multi, ENQ2), Driver(multi, SMALL)
    assert [d1.alloc(), d2.alloc(), d1.alloc()] == [1, 2, 3]     # one system-wide space
    assert [small.alloc(), small.alloc()] == [1, 2]              # its own: 1 again
    # The small device's space is 1..3 and the mdev's default PASID (3) is
    # routed only once the mdev attaches: 3 is still free now.
    assert small.alloc() == 3
    assert small.err(uapi.IOMMUFS_PASID_ALLOC, new("iommufs_pasid")) == errno.ENOSPC
    small.free(2)
    assert small.alloc() == 2                                    # reused
    assert d2.err(uapi.IOMMUFS_PASID_FREE, new("iommufs_pasid", pasid=1)) == errno.ENOENT  # d1's
    d1.close()                                                   # frees 1 and 3
    assert d2.alloc() == 1


def test_driver_rules(kit):
    plain = Driver(kit, PLAIN)
    assert plain.err(uapi.IOMMUFS_PASID_ALLOC, new("iommufs_pasid")) == errno.EOPNOTSUPP
    assert plain.err(uapi.IOMMUFS_SVA_BIND, new("iommufs_sva_bind")) == errno.EOPNOTSUPP
    mdev = Driver(kit, "mdev0")
    assert mdev.err(uapi.IOMMUFS_PASID_ALLOC, new("iommufs_pasid")) == errno.EOPNOTSUPP
    d = Driver(kit, ACCEL)
    assert d.err(uapi.IOMMUFS_PASID_ALLOC, new("iommufs_pasid", flags=1)) == errno.EOPNOTSUPP
    assert d.err(uapi.IOMMUFS_PASID_ALLOC, new("iommufs_pasid", __reserved=1)) == errno.EOPNOTSUPP
    c = new("iommufs_pasid")
    c.size = 8
    assert d.err(uapi.IOMMUFS_PASID_ALLOC, c) == errno.EINVAL     # below the minimum
    big = new("iommufs_sva_bind")
    raw = Buffer(4096)
    raw[0:4] = (32).to_bytes(4, "little")
    raw[28:29] = b"\1"
    with pytest.raises(UapiError) as e:
        d.f.ioctl(kit.caller, uapi.IOMMUFS_SVA_BIND, MemArg(kit.caller.mem, raw.va))
    assert e.value.errno == errno.E2BIG
    assert d.err(0xF51F, big) == errno.ENOTTY
    assert d.err(uapi.IOMMUFS_SVA_UNBIND, new("iommufs_sva", handle=9)) == errno.ENOENT
    assert d.err(uapi.IOMMUFS_SVA_GET_PASID, new("iommufs_sva", handle=9)) == errno.ENOENT
    other = Caller(kit.caller.tid, kit.caller.uid + 1, 0)
    with pytest.raises(UapiError) as e:
        d.f.ioctl(other, uapi.IOMMUFS_PASID_ALLOC, MemArg(other.mem, addr(c)))
    assert e.value.errno == errno.EACCES


# -- PASID attach (§8, §11.3) and routing by {RID, PASID} -------------------------------------
def test_pasid_attach_routes_dma_and_unattached_pasid_faults(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(ACCEL)
    hwpt = kit.hwpt(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    buf = Buffer(MB)
    kit.map(ioas, buf.va, MB, iova=0x100000)
    assert write(kit, ACCEL, 0x100000, b"x", pasid=7) == -errno.ENODEV   # nothing attached at all
    assert kit.attach(vf, hwpt, pasid=7) == hwpt
    assert write(kit, ACCEL, 0x100010, b"pasid7", pasid=7) == 0
    assert buf[0x10:0x16] == b"pasid7"
    assert write(kit, ACCEL, 0x100020, b"p8", pasid=8) == -errno.EFAULT   # a PASID without route
    assert write(kit, ACCEL, 0x100020, b"rid") == -errno.ENODEV          # the RID is not attached
    assert write(kit, ACCEL, 0x100020, b"big", pasid=1 << 20) == -errno.EINVAL  # not emittable
    assert buf[0x20:0x23] == b"\0\0\0"
    # Detach of that PASID: DMA with it stops; a PASID never attached detaches fine.
    d = new("vfio_device_detach_iommufd_pt", flags=uapi.VFIO_DEVICE_DETACH_PASID, pasid=7)
    kit.vfio(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)
    kit.vfio(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)
    assert write(kit, ACCEL, 0x100010, b"gone!!", pasid=7) == -errno.ENODEV
    assert kit.destroy(hwpt) is None


def test_pasid_attach_second_attach_replaces(kit):
    ioas = kit.ioas()
    vf, dev_id = kit.bind(ACCEL)
    h1 = kit.hwpt(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    other = kit.ioas()
    h2 = kit.hwpt(dev_id, other, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    a, b = Buffer(MB), Buffer(MB)
    kit.map(ioas, a.va, MB, iova=0)
    kit.map(other, b.va, MB, iova=0)
    kit.attach(vf, h1, pasid=3)
    assert write(kit, ACCEL, 0x40, b"one", pasid=3) == 0 and a[0x40:0x43] == b"one"
    assert kit.attach(vf, h2, pasid=3) == h2                 # replace
    kit.destroy(h1)                                          # no longer in use
    assert write(kit, ACCEL, 0x40, b"two", pasid=3) == 0
    assert b[0x40:0x43] == b"two" and a[0x40:0x43] == b"one"


def test_pasid_flag_on_devices_without_pasid_is_eopnotsupp(kit):
    ioas = kit.ioas()
    for name in (PLAIN, "mdev0"):
        vf, dev_id = kit.bind(name)
        a = new("vfio_device_attach_iommufd_pt", flags=uapi.VFIO_DEVICE_ATTACH_PASID, pt_id=ioas, pasid=1)
        assert kit.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EOPNOTSUPP
        d = new("vfio_device_detach_iommufd_pt", flags=uapi.VFIO_DEVICE_DETACH_PASID, pasid=1)
        assert kit.vfio_err(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d) == errno.EOPNOTSUPP
        d.argsz = 11
        assert kit.vfio_err(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d) == errno.EOPNOTSUPP


def test_detach_pasid_argsz_rule(kit):
    vf, dev_id = kit.bind(ACCEL)
    d = new("vfio_device_detach_iommufd_pt", flags=uapi.VFIO_DEVICE_DETACH_PASID, pasid=1)
    d.argsz = 11
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d) == errno.EINVAL
    d.argsz, d.flags = 12, 2
    assert kit.vfio_err(vf, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, d) == errno.EINVAL


def test_hw_info_reports_pasid_width_and_capabilities(kit):
    for name, log2, caps in [
        (ACCEL, 20, uapi.IOMMU_HW_CAP_DIRTY_TRACKING | uapi.IOMMU_HW_CAP_PCI_PASID_EXEC
         | uapi.IOMMU_HW_CAP_PCI_PASID_PRIV),
        (PLAIN, 0, uapi.IOMMU_HW_CAP_DIRTY_TRACKING | uapi.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED),
    ]:
        vf, dev_id = kit.bind(name)
        c = new("iommu_hw_info", dev_id=dev_id)
        kit.ioctl(uapi.IOMMU_GET_HW_INFO, c)
        assert (c.out_max_pasid_log2, c.out_capabilities) == (log2, caps)


def test_hwpt_alloc_pasid_needs_an_iommu_with_pasid():
    k = Kit(Topology.from_string('[iommu]\npasid_bits = 0\n[[device]]\nname = "0000:00:02.0"\n'))
    try:
        ioas = k.ioas()
        vf, dev_id = k.bind("0000:00:02.0")
        c = new("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
        assert k.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    finally:
        k.close()


# -- one HWPT, several devices, different PASIDs (seed 003) -------------------------------------
def test_one_hwpt_serves_two_devices_under_different_pasids(multi):
    ioas = multi.ioas()
    vf1, d1 = multi.bind(ENQ1)
    vf2, d2 = multi.bind(ENQ2)
    hwpt = multi.hwpt(d1, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    buf = Buffer(MB)
    multi.map(ioas, buf.va, MB, iova=0x200000)
    p1, p2 = Driver(multi, ENQ1).alloc(), Driver(multi, ENQ2).alloc()
    assert (p1, p2) == (1, 2)
    multi.attach(vf1, hwpt, pasid=p1)
    multi.attach(vf2, hwpt, pasid=p2)
    assert write(multi, ENQ1, 0x200000, b"dev1", pasid=p1) == 0
    assert write(multi, ENQ2, 0x200004, b"dev2", pasid=p2) == 0
    assert buf[0:8] == b"dev1dev2"
    # Each device's PASID is routing data of its own attachment only.
    assert write(multi, ENQ1, 0x200000, b"no", pasid=p2) == -errno.EFAULT
    assert write(multi, ENQ2, 0x200000, b"no", pasid=p1) == -errno.EFAULT
    assert multi.destroy_err(hwpt) == errno.EBUSY


# -- groups and RID aliases (seed 001) ------------------------------------------------------------
def test_group_dma_carries_the_alias_rid(kit):
    ioas = kit.ioas()
    vf0, d0 = kit.bind(BR0)
    kit.attach(vf0, ioas)
    buf = Buffer(MB)
    kit.map(ioas, buf.va, MB, iova=0x300000)
    # BR1 is not even bound: its DMA carries the bridge's RID all the same,
    # so the IOMMU translates it through what BR0 attached.
    assert write(kit, BR1, 0x300000, b"alias") == 0
    assert buf[0:5] == b"alias"
    assert write(kit, PLAIN, 0x300000, b"plain") == -errno.ENODEV


def test_group_is_owned_by_one_context(kit):
    vf0, d0 = kit.bind(BR0)
    other = kit.open_iommufd()
    vf1 = kit.open_vfio(BR1)
    b = new("vfio_device_bind_iommufd", iommufd=7)
    assert kit.vfio_err(vf1, uapi.VFIO_DEVICE_BIND_IOMMUFD, b, ctx=other.ctx) == errno.EBUSY
    kit.vfio(vf1, uapi.VFIO_DEVICE_BIND_IOMMUFD, b)            # the same context: fine
    assert b.out_devid == d0 + 1
    other.release()


def test_group_members_in_info():
    by = Emulator(Topology.builtin()).devices     # the info document is a live device's
    assert by[BR0].info()["group_members"] == [BR0, BR1] == by[BR1].info()["group_members"]
    assert by[PLAIN].info()["group_members"] == [PLAIN]
    assert by["mdev0"].info()["group_members"] == ["mdev0"]


# -- mdevs (seed 004) --------------------------------------------------------------------------------
def test_mdev_dma_is_parent_rid_with_default_pasid(kit):
    ioas = kit.ioas()
    vfm, dm = kit.bind("mdev0")
    assert kit.attach(vfm, ioas) > 0                      # QEMU attaches an mdev to the IOAS
    buf = Buffer(MB)
    kit.map(ioas, buf.va, MB, iova=0x400000)
    assert write(kit, "mdev0", 0x400000, b"mdev") == 0
    assert buf[0:4] == b"mdev"
    # On the wire that was {parent RID, PASID 1}: the parent emitting PASID 1
    # is indistinguishable and reaches the mdev's address space.
    assert write(kit, ACCEL, 0x400004, b"par1", pasid=1) == 0
    assert buf[4:8] == b"par1"
    assert write(kit, ACCEL, 0x400008, b"rid!") == -errno.ENODEV
    assert dma(kit, "mdev0", 2, 0x400000, 2, b"xx", pasid=1)[0] == -errno.EINVAL  # no PASID of its own
    # The parent cannot take PASID 1 for itself while the mdev holds it.
    vfp, dp = kit.bind(ACCEL)
    hp = kit.hwpt(dp, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    a = new("vfio_device_attach_iommufd_pt", flags=uapi.VFIO_DEVICE_ATTACH_PASID, pt_id=hp, pasid=1)
    assert kit.vfio_err(vfp, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EBUSY
    assert kit.attach(vfp, hp, pasid=2) == hp
    # The mdev reserves no IOVA in its IOAS (a PASID attach, §8): the MSI window is free.
    ranges = ioas_ranges(kit, ioas)
    assert (0, (1 << 48) - 1) in ranges


def ioas_ranges(kit, ioas):
    arr = Buffer(4096)
    c = new("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=16, allowed_iovas=arr.va)
    kit.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, c)
    return [(int.from_bytes(arr[i * 16:i * 16 + 8], "little"),
             int.from_bytes(arr[i * 16 + 8:i * 16 + 16], "little")) for i in range(c.num_iovas)]


def test_mdev_cannot_attach_over_a_parent_pasid(kit):
    ioas = kit.ioas()
    vfp, dp = kit.bind(ACCEL)
    hp = kit.hwpt(dp, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    kit.attach(vfp, hp, pasid=1)
    vfm, dm = kit.bind("mdev0")
    a = new("vfio_device_attach_iommufd_pt", pt_id=ioas)
    assert kit.vfio_err(vfm, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EBUSY
    assert kit.destroy_err(dm + 1) == errno.ENOENT        # no auto HWPT was left behind


# -- SVA bonds (seed 002) -------------------------------------------------------------------------------
def test_sva_dma_reaches_the_process_at_its_virtual_addresses(kit):
    d = Driver(kit, ACCEL)
    handle, pasid = d.bind()
    assert (handle, pasid) == (1, 1)
    assert d.bind() == (handle, pasid)                       # same mm, same device: same handle
    got = new("iommufs_sva", handle=handle)
    d.call(uapi.IOMMUFS_SVA_GET_PASID, got)
    assert got.out_pasid == pasid
    buf = Buffer(8192)
    assert write(kit, ACCEL, buf.va + 100, b"shared VA", pasid=pasid) == 0
    assert buf[100:109] == b"shared VA"
    buf[200:204] = b"back"
    st, data = dma(kit, ACCEL, 1, buf.va + 200, 4, pasid=pasid)
    assert (st, data) == (0, b"back")
    st, _ = dma(kit, ACCEL, 1, 8, 4, pasid=pasid)           # page 0 is never mapped
    assert st == -errno.EFAULT
    import mmap
    ro = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
    from core.uapi import ffi
    ro_va = int(ffi.cast("uintptr_t", ffi.from_buffer(ro)))
    assert write(kit, ACCEL, ro_va, b"x", pasid=pasid) == -errno.EACCES
    # Two binds need two unbinds; then the PASID is gone.
    assert d.unbind(handle) == pasid
    assert write(kit, ACCEL, buf.va, b"still", pasid=pasid) == 0
    d.unbind(handle)
    assert write(kit, ACCEL, buf.va, b"after", pasid=pasid) == -errno.ENODEV
    assert d.err(uapi.IOMMUFS_SVA_UNBIND, new("iommufs_sva", handle=handle)) == errno.ENOENT
    assert kit.emu.global_pasids.used == set()


def test_sva_pasid_is_the_same_on_every_enqcmd_device(multi):
    d1, d2, small = Driver(multi, ENQ1), Driver(multi, ENQ2), Driver(multi, SMALL)
    assert d1.alloc() == 1                                    # a global PASID taken first
    h1, p1 = d1.bind()
    h2, p2 = d2.bind()
    assert p1 == p2 == 2 and h1 != h2
    hs, ps = small.bind()                                     # its own space
    assert ps == 1
    buf = Buffer(4096)
    assert write(multi, ENQ2, buf.va, b"enq2", pasid=p2) == 0
    assert write(multi, SMALL, buf.va + 4, b"smal", pasid=ps) == 0
    assert buf[0:8] == b"enq2smal"
    d1.unbind(h1)
    assert 2 in multi.emu.global_pasids                       # ENQ2 still uses it
    d2.unbind(h2)
    assert 2 not in multi.emu.global_pasids


def test_sva_bond_refuses_a_routed_pasid_and_blocks_pasid_attach(multi):
    ioas = multi.ioas()
    vf, dev_id = multi.bind(SMALL)
    hwpt = multi.hwpt(dev_id, ioas, flags=uapi.IOMMU_HWPT_ALLOC_PASID)
    multi.attach(vf, hwpt, pasid=1)
    small = Driver(multi, SMALL)
    h, p = small.bind()
    assert p == 2                                             # 1 is routed: skipped
    a = new("vfio_device_attach_iommufd_pt", flags=uapi.VFIO_DEVICE_ATTACH_PASID, pt_id=hwpt, pasid=2)
    assert multi.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EBUSY
    assert small.alloc() == 3
    assert small.err(uapi.IOMMUFS_SVA_BIND, new("iommufs_sva_bind", pid=os.getppid())) == errno.ENOSPC


def test_sva_bond_to_another_uid_is_refused(kit):
    d = Driver(kit, ACCEL, caller=Caller(kit.caller.tid, 4242, 4242))
    # This test process runs as root: binding it from uid 4242 is refused.
    if os.getuid() != 0:
        pytest.skip("needs a process of another uid")
    assert d.err(uapi.IOMMUFS_SVA_BIND, new("iommufs_sva_bind", pid=os.getpid())) == errno.EPERM
    assert d.err(uapi.IOMMUFS_SVA_BIND, new("iommufs_sva_bind", pid=0x3FFFFFF0)) == errno.ESRCH
    assert kit.emu.sva.bonds == {}


def test_mm_exit_event_then_dma_fails_and_unbind_still_works(kit):
    child = subprocess.Popen([sys.executable, "-c", (
        "import mmap, sys, cffi; f = cffi.FFI(); m = mmap.mmap(-1, 4096); "
        "print(int(f.cast('uintptr_t', f.from_buffer(m))), flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        va = int(child.stdout.readline())
        d = Driver(kit, ACCEL)
        handle, pasid = d.bind(pid=child.pid)
        assert write(kit, ACCEL, va, b"alive", pasid=pasid) == 0
        assert d.events() == []
        pidfd = kit.emu.sva.bonds[handle].mm.owner.pidfd
        assert pidfd in kit.emu.watches
        changed = []
        d.f.on_change = lambda: changed.append(1)
        child.kill()
        child.wait()
        kit.emu.fire_watch(kit.emu.watches[pidfd])            # what the transport does
        assert changed == [1]
        with pytest.raises(UapiError) as e:
            d.f.read(kit.caller, 31, 0)
        assert e.value.errno == errno.EINVAL
        assert d.events() == [(uapi.IOMMUFS_EVENT_MM_EXIT, handle, pasid, child.pid, 0, 0, 0)]
        assert d.events() == []
        assert write(kit, ACCEL, va, b"dead", pasid=pasid) == -errno.EFAULT
        assert d.unbind(handle) == pasid
        assert kit.emu.sva.mms == {} and pidfd not in kit.emu.watches
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_closing_the_driver_unbinds_and_frees(multi):
    d = Driver(multi, ENQ1)
    d.alloc()
    d.bind()
    d.bind()
    d.close()
    assert multi.emu.sva.bonds == {} and multi.emu.global_pasids.used == set()
    assert multi.emu.devices[ENQ1].sva_bonds == {}
