"""Unit tests of IOMMU_TEST_CMD (reference §12, §13), core only, no mount.

Every op's rules in the kernel's order: mock devices and their SELFTEST
objects, the mock domain's geometry (§7), MD_CHECK_MAP against real memory,
the pin-count model of MD_CHECK_REFS, in-kernel accesses (pin, read/write,
unmap callbacks, replace), TRIGGER_IOPF into a fault queue, and the PASID
ops with the mock's rigged PASID 1024 (§8).
"""
import ctypes
import errno
import mmap
import os
import struct

import pytest

from core import uapi
from core.caller import Caller
from core.errors import UapiError
from core.iommufd.selftest import AccessFile
from core.uapi import ffi
from core.mm.usermem import MemArg
from devfs.client import Buffer

from corekit import Kit, addr, new

PLAIN = "0000:00:03.0"
PAGE = 4096
MOCK_PAGE = uapi.MOCK_PAGE_SIZE
APERTURE = (uapi.MOCK_APERTURE_START, uapi.MOCK_APERTURE_LAST)
RW = uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE
RO = uapi.IOMMU_IOAS_MAP_READABLE
NEEDS_PIN = uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES
AFD = 9          # the fd number the tests give an access file
PROT_NONE = 0


class ST(Kit):
    """A Kit that speaks IOMMU_TEST_CMD. Each call gets a fresh Caller (as
    each request does through the transport), with ``fds`` resolved."""

    def test(self, op, id=0, fds=None, size=None, **members):
        """Run op; returns the struct (out fields filled). ``members``:
        union member name -> {field: value}."""
        c = self.cmd(op, id, **members)
        if size is not None:
            c.size = size
        self.last_caller = self.run(c, fds)
        return c

    def cmd(self, op, id=0, **members):
        c = new("iommu_test_cmd", op=op, id=id)
        for member, fields in members.items():
            for k, v in fields.items():
                setattr(getattr(c, member), k, v)
        return c

    def run(self, c, fds=None):
        caller = Caller(self.caller.tid, self.caller.uid, self.caller.gid, fds=fds)
        self.iommufd.ioctl(caller, uapi.IOMMU_TEST_CMD, MemArg(caller.mem, addr(c)))
        return caller

    def test_err(self, op, id=0, fds=None, **members):
        try:
            self.test(op, id, fds, **members)
        except UapiError as e:
            return e.errno
        raise AssertionError(f"test op {op} succeeded")

    # -- the ops a test uses over and over -----------------------------------------------
    def mock_domain(self, pt_id, dev_flags=None):
        if dev_flags is None:
            c = self.test(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id)
        else:
            c = self.test(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id,
                          mock_domain_flags={"dev_flags": dev_flags})
        return c.mock_domain.out_stdev_id, c.mock_domain.out_hwpt_id, c.mock_domain.out_idev_id

    def refs(self, va, length):
        """The pin count of every page of [va, va+length), as MD_CHECK_REFS
        answers it: the smallest refs value it accepts for each page."""
        out = []
        for p in range(va, va + length, PAGE):
            for n in range(8):
                if self.check_refs(p, PAGE, n) == 0:
                    out.append(n)
                    break
            else:
                out.append(None)
        return out

    def check_refs(self, va, length, refs):
        try:
            self.test(uapi.IOMMU_TEST_OP_MD_CHECK_REFS, check_refs={"uptr": va, "length": length, "refs": refs})
        except UapiError as e:
            return e.errno
        return 0

    def check_map(self, hwpt, iova, length, uptr):
        try:
            self.test(uapi.IOMMU_TEST_OP_MD_CHECK_MAP, hwpt,
                      check_map={"iova": iova, "length": length, "uptr": uptr})
        except UapiError as e:
            return e.errno
        return 0

    def create_access(self, ioas_id, flags=NEEDS_PIN):
        c = self.test(uapi.IOMMU_TEST_OP_CREATE_ACCESS, ioas_id, create_access={"flags": flags})
        assert c.create_access.out_access_fd == 0xFFFFFFFF
        (afile,) = self.last_caller.returned
        assert isinstance(afile, AccessFile)
        return afile

    def access_pages(self, afile, iova, length, uptr=0, flags=0):
        c = self.test(uapi.IOMMU_TEST_OP_ACCESS_PAGES, AFD, fds={AFD: afile},
                      access_pages={"iova": iova, "length": length, "uptr": uptr, "flags": flags})
        return c.access_pages.out_access_pages_id

    def access_rw(self, afile, iova, buf_va, length, flags=0):
        self.test(uapi.IOMMU_TEST_OP_ACCESS_RW, AFD, fds={AFD: afile},
                  access_rw={"iova": iova, "length": length, "uptr": buf_va, "flags": flags})

    def iova_ranges(self, ioas_id):
        arr = ffi.new("struct iommu_iova_range[8]")
        r = new("iommu_ioas_iova_ranges", ioas_id=ioas_id, num_iovas=8, allowed_iovas=addr(arr))
        self.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, r)
        return [(arr[i].start, arr[i].last) for i in range(r.num_iovas)], r.out_iova_alignment

    def unmap(self, ioas_id, iova, length):
        c = new("iommu_ioas_unmap", ioas_id=ioas_id, iova=iova, length=length)
        self.ioctl(uapi.IOMMU_IOAS_UNMAP, c)
        return c.length

    def fault_queue(self):
        c = new("iommu_fault_alloc")
        caller = Caller(self.caller.tid, self.caller.uid, self.caller.gid)
        self.iommufd.ioctl(caller, uapi.IOMMU_FAULT_QUEUE_ALLOC, MemArg(caller.mem, addr(c)))
        return c.out_fault_id, caller.returned[0]


@pytest.fixture
def st():
    k = ST()
    yield k
    k.close()


@pytest.fixture
def buf():
    b = Buffer(1 << 20)
    yield b
    b.close()


def _mprotect(va, length, prot):
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(va), ctypes.c_size_t(length), prot) == 0


def _unmapped_va():
    b = Buffer(1 << 16)
    va = b.va
    b.close()
    return va


# -- layout and the generic rules (§1-§3, §12) -------------------------------------------------
UNION = {   # member -> [(field, offset within the union, size)]
    "add_reserved": [("start", 0, 8), ("length", 8, 8)],
    "mock_domain": [("out_stdev_id", 0, 4), ("out_hwpt_id", 4, 4), ("out_idev_id", 8, 4)],
    "mock_domain_flags": [("dev_flags", 12, 4)],
    "mock_domain_replace": [("pt_id", 0, 4)],
    "check_map": [("iova", 0, 8), ("length", 8, 8), ("uptr", 16, 8)],
    "check_refs": [("length", 0, 8), ("uptr", 8, 8), ("refs", 16, 4)],
    "create_access": [("out_access_fd", 0, 4), ("flags", 4, 4)],
    "destroy_access_pages": [("access_pages_id", 0, 4)],
    "access_pages": [("flags", 0, 4), ("out_access_pages_id", 4, 4), ("iova", 8, 8),
                     ("length", 16, 8), ("uptr", 24, 8)],
    "access_rw": [("iova", 0, 8), ("length", 8, 8), ("uptr", 16, 8), ("flags", 24, 4)],
    "memory_limit": [("limit", 0, 4)],
    "access_replace_ioas": [("ioas_id", 0, 4)],
    "trigger_iopf": [("dev_id", 0, 4), ("pasid", 4, 4), ("grpid", 8, 4), ("perm", 12, 4),
                     ("addr", 16, 8)],
    "pasid_attach": [("pasid", 0, 4), ("pt_id", 4, 4)],
    "pasid_replace": [("pasid", 0, 4), ("pt_id", 4, 4)],
    "pasid_detach": [("pasid", 0, 4)],
    "pasid_check": [("pasid", 0, 4), ("hwpt_id", 4, 4)],
    "check_dev_cache": [("id", 0, 4), ("cache", 4, 4)],
}


def test_layout_and_numbers():
    t = ffi.typeof("struct iommu_test_cmd")
    assert uapi.IOMMU_TEST_CMD == 0x3BA0 and ffi.sizeof(t) == 72
    assert [(n, ffi.offsetof(t, n)) for n in ("size", "op", "id", "__reserved", "last")] == \
        [("size", 0), ("op", 4), ("id", 8), ("__reserved", 12), ("last", 64)]
    for member, fields in UNION.items():
        assert ffi.offsetof(t, member) == 16
        mt = dict(t.fields)[member].type
        for name, off, size in fields:
            assert (ffi.offsetof(mt, name), ffi.sizeof(dict(mt.fields)[name].type)) == (off, size), (member, name)
    assert (uapi.MOCK_APERTURE_START, uapi.MOCK_APERTURE_LAST) == (0x1000000, 0x7FFFFFFF)
    assert (uapi.MOCK_PAGE_SIZE, uapi.MOCK_HUGE_PAGE_SIZE) == (2048, 1 << 20)
    assert (uapi.IOMMU_TEST_PASID_RESERVED, uapi.MOCK_PASID_WIDTH) == (1024, 20)


def test_generic_size_rules_and_unknown_ops(st):
    ioas = st.ioas()
    c = st.cmd(uapi.IOMMU_TEST_OP_ADD_RESERVED, ioas, add_reserved={"start": 0x10000, "length": 0x1000})
    c.size = 67
    with pytest.raises(UapiError) as e:
        st.run(c)
    assert e.value.errno == errno.EINVAL
    c.size = 68                                  # `last` is the last mandatory field
    st.run(c)
    for op in (0, uapi.IOMMU_TEST_OP_MD_CHECK_IOTLB,
               uapi.IOMMU_TEST_OP_TRIGGER_VEVENT, 24, 0xFFFF):
        assert st.test_err(op, ioas) == errno.EOPNOTSUPP, op


def test_only_responding_ops_write_the_struct_back(st):
    ioas = st.ioas()
    # A read-only struct: ADD_RESERVED succeeds (nothing written back); MOCK_DOMAIN
    # cannot answer, so it fails EFAULT and is undone (IDs free again).
    page = Buffer(PAGE)
    c = st.cmd(uapi.IOMMU_TEST_OP_ADD_RESERVED, ioas, add_reserved={"start": 0x20000, "length": 0x1000})
    page[0:72] = ffi.buffer(c)[:]
    _mprotect(page.va, PAGE, mmap.PROT_READ)
    st.iommufd.ioctl(st.caller, uapi.IOMMU_TEST_CMD, MemArg(st.caller.mem, page.va))
    _mprotect(page.va, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    c = st.cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)
    page[0:72] = ffi.buffer(c)[:]
    _mprotect(page.va, PAGE, mmap.PROT_READ)
    with pytest.raises(UapiError) as e:
        st.iommufd.ioctl(st.caller, uapi.IOMMU_TEST_CMD, MemArg(st.caller.mem, page.va))
    assert e.value.errno == errno.EFAULT
    assert list(st.ctx.objects) == [ioas] and st.ioas() == ioas + 1
    assert not [d for d in st.emu.by_rid.values() if d[0].name.startswith("mock")]
    _mprotect(page.va, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    page.close()


# -- ADD_RESERVED ---------------------------------------------------------------------------------
def test_add_reserved_rules_in_order(st, buf):
    ioas = st.ioas()
    hwpt_like = st.ioas()
    add = uapi.IOMMU_TEST_OP_ADD_RESERVED
    assert st.test_err(add, 99, add_reserved={"start": 0x1000, "length": 0}) == errno.ENOENT
    stdev, hwpt, idev = st.mock_domain(hwpt_like)
    assert st.test_err(add, hwpt, add_reserved={"start": 0x1000, "length": 0x1000}) == errno.ENOENT
    assert st.test_err(add, ioas, add_reserved={"start": 0x1000, "length": 0}) == errno.EINVAL
    assert st.test_err(add, ioas, add_reserved={"start": 2 ** 64 - 0x1000, "length": 0x2000}) == errno.EINVAL
    st.test(add, ioas, add_reserved={"start": 0x100000, "length": 0x10000})
    st.test(add, ioas, add_reserved={"start": 0x108000, "length": 0x10000})    # overlaps are fine
    assert st.iova_ranges(ioas)[0] == [(0, 0xFFFFF), (0x118000, 2 ** 64 - 1)]
    m = new("iommu_ioas_map", flags=RW | uapi.IOMMU_IOAS_MAP_FIXED_IOVA, ioas_id=ioas,
            user_va=buf.va, length=PAGE, iova=0x104000)
    assert st.err(uapi.IOMMU_IOAS_MAP, m) == errno.EINVAL
    st.map(ioas, buf.va, PAGE, iova=0x200000)
    assert st.test_err(add, ioas, add_reserved={"start": 0x200FFF, "length": 1}) == errno.EADDRINUSE
    arr = ffi.new("struct iommu_iova_range[1]", [(0x400000, 0x4FFFFF)])
    st.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, new("iommu_ioas_allow_iovas", ioas_id=ioas, num_iovas=1,
                                              allowed_iovas=addr(arr)))
    assert st.test_err(add, ioas, add_reserved={"start": 0x4FF000, "length": 0x2000}) == errno.EADDRINUSE


# -- MOCK_DOMAIN, MOCK_DOMAIN_FLAGS, the stdev -----------------------------------------------------
def test_mock_domain_ids_geometry_and_destroy(st):
    ioas = st.ioas()
    assert st.iova_ranges(ioas) == ([(0, 2 ** 64 - 1)], 1)
    stdev, hwpt, idev = st.mock_domain(ioas)
    # The stdev's ID is taken first, then the DEVICE's (bind), then the auto HWPT's.
    assert (stdev, idev, hwpt) == (ioas + 1, ioas + 2, ioas + 3)
    assert [st.ctx.objects[i].kind for i in sorted(st.ctx.objects)] == ["IOAS", "SELFTEST", "DEVICE", "HWPT_PAGING"]
    # §7: the mock domain reserves all but its aperture; its 2 KiB pages set the alignment.
    assert st.iova_ranges(ioas) == ([APERTURE], MOCK_PAGE)
    assert st.destroy_err(idev) == errno.EBUSY            # only the stdev unbinds it
    assert st.destroy_err(hwpt) == errno.EBUSY            # the device is attached
    assert st.destroy_err(ioas) == errno.EBUSY
    # A second mock device on the same IOAS shares the auto domain.
    stdev2, hwpt2, idev2 = st.mock_domain(ioas)
    assert hwpt2 == hwpt and len({stdev, stdev2, idev, idev2}) == 4
    rids = {st.ctx.objects[i].device.rid for i in (idev, idev2)}
    assert len(rids) == 2 and min(rids) >= 0xFE00
    st.destroy(stdev)
    assert st.ctx.find(idev) is None and st.ctx.find(hwpt) is not None
    st.destroy(stdev2)
    assert list(st.ctx.objects) == [ioas]                 # the auto HWPT went with its last device
    assert st.iova_ranges(ioas) == ([(0, 2 ** 64 - 1)], 1)
    assert not any(d.name.startswith("mock") for ds in st.emu.by_rid.values() for d in ds)
    st.destroy(ioas)


def test_mock_domain_errors_leave_nothing(st, buf):
    ioas = st.ioas()
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, 77) == errno.ENOENT
    stdev, hwpt, idev = st.mock_domain(ioas)
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, idev) == errno.EINVAL       # a DEVICE
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, ioas,
                       mock_domain_flags={"dev_flags": 2}) == errno.EINVAL         # HUGE_IOVA is gone
    # An IOAS with an area outside the aperture, or not 2 KiB aligned.
    out = st.ioas()
    st.map(out, buf.va, PAGE, iova=0x1000)
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, out) == errno.EADDRINUSE
    odd = st.ioas()
    st.map(odd, buf.va, 1024, iova=0x1000400)
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, odd) == errno.EADDRINUSE
    # Nothing of the failed calls remains: the next ID is the lowest free one.
    assert sorted(st.ctx.objects) == [ioas, stdev, idev, hwpt, out, odd]
    assert st.ioas() == odd + 1
    # A mock device cannot join a domain of the emulated PCI IOMMU, nor the reverse.
    vf, dev_id = st.bind(PLAIN)
    pci = st.hwpt(dev_id, ioas)
    before = sorted(st.ctx.objects)
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, pci) == errno.EINVAL
    assert sorted(st.ctx.objects) == before
    a = new("vfio_device_attach_iommufd_pt", pt_id=hwpt)
    assert st.vfio_err(vf, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.EINVAL


def test_mock_domain_on_a_hwpt_and_dirty_tracking_flags(st):
    ioas = st.ioas()
    _, _, idev = st.mock_domain(ioas)
    dirty = st.hwpt(idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    s2, h2, i2 = st.mock_domain(dirty)
    assert h2 == dirty
    _, _, nodirty = st.mock_domain(ioas, uapi.MOCK_FLAGS_DEVICE_NO_DIRTY)
    c = new("iommu_hwpt_alloc", dev_id=nodirty, pt_id=ioas, flags=uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    assert st.err(uapi.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    assert st.destroy_err(dirty) == errno.EBUSY
    st.destroy(s2)
    st.destroy(dirty)


def test_mock_domain_replace(st):
    ioas, ioas2 = st.ioas(), st.ioas()
    stdev, auto, idev = st.mock_domain(ioas)
    rep = uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE
    assert st.test_err(rep, idev, mock_domain_replace={"pt_id": ioas}) == errno.ENOENT   # not a stdev
    assert st.test_err(rep, stdev, mock_domain_replace={"pt_id": 99}) == errno.ENOENT
    hwpt = st.hwpt(idev, ioas2)
    c = st.test(rep, stdev, mock_domain_replace={"pt_id": hwpt})
    assert c.mock_domain_replace.pt_id == hwpt
    assert st.ctx.find(auto) is None                       # the old auto domain went away
    c = st.test(rep, stdev, mock_domain_replace={"pt_id": hwpt})        # the same: no-op
    assert c.mock_domain_replace.pt_id == hwpt
    c = st.test(rep, stdev, mock_domain_replace={"pt_id": ioas})        # an IOAS: a new auto domain
    assert c.mock_domain_replace.pt_id != hwpt and st.ctx.objects[c.mock_domain_replace.pt_id].auto
    st.destroy(hwpt)
    # Replacing where nothing is attached is EINVAL (a core replace, §8).
    st.test(uapi.IOMMU_TEST_OP_PASID_DETACH, stdev, pasid_detach={"pasid": 0})
    assert st.test_err(rep, stdev, mock_domain_replace={"pt_id": ioas}) == errno.EINVAL


# -- MD_CHECK_MAP --------------------------------------------------------------------------------
def test_md_check_map(st, buf):
    ioas = st.ioas()
    stdev, hwpt, idev = st.mock_domain(ioas)
    buf[0:4] = b"page"
    iova = st.map(ioas, buf.va, 64 * PAGE)
    assert APERTURE[0] <= iova and iova + 64 * PAGE - 1 <= APERTURE[1]
    assert st.check_map(hwpt, iova, 64 * PAGE, buf.va) == 0
    assert st.check_map(hwpt, iova + MOCK_PAGE, MOCK_PAGE, buf.va + MOCK_PAGE) == 0
    assert st.check_map(hwpt, iova, 0, buf.va) == 0
    # In order: the HWPT, then alignment to the mock page, then page by page.
    assert st.check_map(ioas, iova, PAGE, buf.va) == errno.ENOENT
    vf, dev_id = st.bind(PLAIN)
    assert st.check_map(st.hwpt(dev_id, ioas), iova, PAGE, buf.va) == errno.EINVAL   # not a mock domain
    assert st.check_map(hwpt, iova + 1024, MOCK_PAGE, buf.va) == errno.EINVAL
    assert st.check_map(hwpt, iova, 1024, buf.va) == errno.EINVAL
    assert st.check_map(hwpt, iova, MOCK_PAGE, buf.va + 1024) == errno.EINVAL
    assert st.check_map(hwpt, iova, MOCK_PAGE * 2, 2 ** 64 - MOCK_PAGE) == errno.EINVAL
    assert st.check_map(hwpt, iova, PAGE, buf.va + PAGE) == errno.EINVAL          # another page
    assert st.check_map(hwpt, iova + 64 * PAGE, PAGE, buf.va + 64 * PAGE) == errno.EINVAL   # unmapped IOVA
    assert st.check_map(hwpt, iova, 65 * PAGE, buf.va) == errno.EINVAL           # runs past the area
    gone = _unmapped_va()
    assert st.check_map(hwpt, iova, PAGE, gone) == errno.EFAULT
    # Page by page: a wrong but readable first page is EINVAL even when the
    # second is unreadable; an unreadable first page is EFAULT.
    two = Buffer(2 * PAGE)
    _mprotect(two.va + PAGE, PAGE, PROT_NONE)
    assert st.check_map(hwpt, iova, 2 * PAGE, two.va) == errno.EINVAL
    _mprotect(two.va, 2 * PAGE, PROT_NONE)
    assert st.check_map(hwpt, iova, 2 * PAGE, two.va) == errno.EFAULT
    _mprotect(two.va, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    two.close()
    st.unmap(ioas, iova, 64 * PAGE)
    assert st.check_map(hwpt, iova, PAGE, buf.va) == errno.EINVAL


# -- MD_CHECK_REFS: the pin-count model (§13) ----------------------------------------------------
def test_md_check_refs_counts_pins_per_distinct_pages(st, buf):
    ioas = st.ioas()
    n = 8
    iova = st.map(ioas, buf.va, n * PAGE, iova=APERTURE[0])   # no domain: lazy, nothing pinned
    assert st.refs(buf.va, n * PAGE) == [0] * n
    stdev, hwpt, idev = st.mock_domain(ioas)            # the domain pins
    assert st.refs(buf.va, n * PAGE) == [1] * n
    assert st.refs(buf.va + n * PAGE, 2 * PAGE) == [0, 0]
    iova2 = st.map(ioas, buf.va + 2 * PAGE, 2 * PAGE)   # the same memory again: other pages
    assert st.refs(buf.va, n * PAGE) == [1, 1, 2, 2, 1, 1, 1, 1]
    cp = new("iommu_ioas_copy", flags=RW, dst_ioas_id=ioas, src_ioas_id=ioas, length=PAGE, src_iova=iova)
    st.ioctl(uapi.IOMMU_IOAS_COPY, cp)                  # a copy shares the pages: pinned once
    assert st.refs(buf.va, n * PAGE) == [1, 1, 2, 2, 1, 1, 1, 1]
    other = st.ioas()
    st.mock_domain(other)
    st.map(other, buf.va, PAGE)                          # another IOAS: other pages
    assert st.refs(buf.va, 2 * PAGE) == [2, 1]
    st.unmap(ioas, iova2, 2 * PAGE)
    assert st.refs(buf.va, n * PAGE) == [2] + [1] * (n - 1)
    st.unmap(ioas, iova, n * PAGE)
    assert st.refs(buf.va, n * PAGE) == [2] + [0] * (n - 1)   # the copy still holds page 0
    st.unmap(ioas, cp.dst_iova, PAGE)
    assert st.refs(buf.va, n * PAGE) == [1] + [0] * (n - 1)
    st.iommufd.release()
    st.new_context()
    assert st.refs(buf.va, n * PAGE) == [0] * n


def test_md_check_refs_rules_in_order(st, buf):
    ioas = st.ioas()
    st.mock_domain(ioas)
    st.map(ioas, buf.va, PAGE)
    assert st.check_refs(buf.va + 1, PAGE, 1) == errno.EINVAL
    assert st.check_refs(buf.va, PAGE + 1, 1) == errno.EINVAL
    assert st.check_refs(2 ** 64 - PAGE, 2 * PAGE, 1) == errno.EINVAL
    assert st.check_refs(buf.va, 0, 7) == 0
    assert st.check_refs(buf.va, PAGE, 1) == 0
    assert st.check_refs(buf.va, PAGE, 2) == errno.EIO
    gone = _unmapped_va()
    assert st.check_refs(gone, PAGE, 0) == errno.EFAULT
    # Page by page: a wrong count on page 0 before the unreadable page 1, and
    # an unreadable page 0 before a wrong count on page 1.
    tail = Buffer(2 * PAGE)
    first, second = tail.va, tail.va + PAGE
    st.map(ioas, second, PAGE)
    _mprotect(first, PAGE, PROT_NONE)
    assert st.check_refs(first, 2 * PAGE, 1) == errno.EFAULT
    assert st.check_refs(first, 2 * PAGE, 0) == errno.EFAULT
    _mprotect(first, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    _mprotect(second, PAGE, PROT_NONE)
    assert st.check_refs(first, 2 * PAGE, 1) == errno.EIO
    _mprotect(second, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    assert st.refs(first, 2 * PAGE) == [0, 1]


# -- CREATE_ACCESS and the ACCESS object ---------------------------------------------------------
def test_create_access_ids_alignment_and_close(st, buf):
    ioas = st.ioas()
    create = uapi.IOMMU_TEST_OP_CREATE_ACCESS
    assert st.test_err(create, ioas, create_access={"flags": 2}) == errno.EOPNOTSUPP
    assert st.test_err(create, 55, create_access={"flags": NEEDS_PIN}) == errno.ENOENT
    assert st.ioas() == ioas + 1                          # the failed access's ID is free again
    st.destroy(ioas + 1)
    afile = st.create_access(ioas)
    access = afile.access
    assert access.id == ioas + 1 and st.ctx.find(access.id) is access and access.kind == "ACCESS"
    assert st.destroy_err(access.id) == errno.EBUSY       # not destroyable by IOMMU_DESTROY
    assert st.destroy_err(ioas) == errno.EBUSY            # it holds the IOAS
    assert st.iova_ranges(ioas)[1] == PAGE                 # a pinning access: PAGE_SIZE (§7)
    plain = st.create_access(ioas, flags=0)
    assert st.iova_ranges(ioas)[1] == PAGE
    afile.close()
    assert st.ctx.find(access.id) is None and st.iova_ranges(ioas)[1] == 1
    plain.close()
    st.destroy(ioas)
    # A pinning access cannot join an IOAS with an area misaligned for it.
    odd = st.ioas()
    st.map(odd, buf.va, 2048, iova=0x800)
    assert st.test_err(create, odd, create_access={"flags": NEEDS_PIN}) == errno.EADDRINUSE
    st.create_access(odd, flags=0)                        # alignment 1 fits anything
    assert sorted(o.kind for o in st.ctx.objects.values()) == ["ACCESS", "IOAS"]


def test_access_fd_resolution_errors(st, buf):
    ioas = st.ioas()
    afile = st.create_access(ioas, flags=0)
    st.map(ioas, buf.va, PAGE, iova=0x100000)
    rw = {"iova": 0x100000, "length": 4, "uptr": buf.va}
    # Not an open fd and not an access fd are both EBADFD, as the kernel's fget check.
    assert st.test_err(uapi.IOMMU_TEST_OP_ACCESS_RW, AFD, access_rw=rw) == errno.EBADFD
    assert st.test_err(uapi.IOMMU_TEST_OP_ACCESS_RW, AFD, fds={AFD: errno.EBADF}, access_rw=rw) == errno.EBADFD
    assert st.test_err(uapi.IOMMU_TEST_OP_ACCESS_RW, AFD, fds={AFD: st.ctx}, access_rw=rw) == errno.EBADFD
    assert st.test_err(uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, AFD, fds={AFD: st.ctx}) == errno.EBADFD
    assert st.test_err(uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, AFD,
                       access_replace_ioas={"ioas_id": ioas}) == errno.EBADFD
    st.access_rw(afile, 0x100000, buf.va + 8, 4)
    afile.close()
    assert st.test_err(uapi.IOMMU_TEST_OP_ACCESS_RW, AFD, fds={AFD: afile}, access_rw=rw) == errno.EBADFD


# -- ACCESS_PAGES / DESTROY_ACCESS_PAGES ---------------------------------------------------------
def test_access_pages_rules_in_order(st, buf):
    ioas = st.ioas()
    afile = st.create_access(ioas)
    plain = st.create_access(ioas, flags=0)
    st.map(ioas, buf.va, 4 * PAGE, iova=0x100000)
    st.map(ioas, buf.va + 4 * PAGE, PAGE, iova=0x104000, flags=RO)
    ap = uapi.IOMMU_TEST_OP_ACCESS_PAGES

    def err(fds, **f):
        return st.test_err(ap, AFD, fds=fds, access_pages=f)
    good = {AFD: afile}
    assert err(None, iova=0x100000, length=(16 << 20) + 1) == errno.ENOMEM      # before the fd
    assert err(None, iova=0x100000, length=PAGE, flags=2) == errno.EOPNOTSUPP
    assert err(None, iova=0x100000, length=PAGE) == errno.EBADFD
    assert err({AFD: plain}, iova=0x100000, length=PAGE) == errno.EOPNOTSUPP    # does not pin
    assert err(good, iova=0x100000, length=0) == errno.EINVAL
    assert err(good, iova=2 ** 64 - PAGE, length=2 * PAGE) == errno.EOVERFLOW
    assert err(good, iova=0x200000, length=PAGE) == errno.ENOENT
    assert err(good, iova=0x104000, length=PAGE, flags=uapi.MOCK_FLAGS_ACCESS_WRITE) == errno.EPERM
    assert err(good, iova=0x103000, length=2 * PAGE + 1) == errno.ENOENT        # past the end
    assert err(good, iova=0x100000, length=PAGE, uptr=buf.va + PAGE) == errno.EBADE
    assert err(good, iova=0x100000, length=PAGE, uptr=_unmapped_va()) == errno.EFAULT
    assert not st.ctx.objects[ioas].access_pins and st.refs(buf.va, 5 * PAGE) == [0] * 5
    # Across the two areas, with an unaligned start: the uptr check follows the pages.
    i0 = st.access_pages(afile, 0x100010, 5 * PAGE - 0x20, uptr=buf.va + 0x10)
    i1 = st.access_pages(afile, 0x101000, PAGE, uptr=buf.va + PAGE)
    i2 = st.access_pages(afile, 0x102000, PAGE, flags=uapi.MOCK_FLAGS_ACCESS_WRITE)
    assert (i0, i1, i2) == (0, 1, 2)                      # ids count from 0 per access fd
    assert st.refs(buf.va, 5 * PAGE) == [1] * 5           # one pin per page per Pages
    d = uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES
    assert st.test_err(d, AFD, fds=good, destroy_access_pages={"access_pages_id": 7}) == errno.ENOENT
    st.test(d, AFD, fds=good, destroy_access_pages={"access_pages_id": i0})
    assert st.test_err(d, AFD, fds=good, destroy_access_pages={"access_pages_id": i0}) == errno.ENOENT
    assert st.refs(buf.va, 5 * PAGE) == [0, 1, 1, 0, 0]
    assert st.access_pages(afile, 0x100000, PAGE) == 3
    afile.close()
    assert st.refs(buf.va, 5 * PAGE) == [0] * 5 and not st.ctx.objects[ioas].access_pins


def test_access_pages_pins_lazy_memory_and_unmap_calls_back(st, buf):
    ioas = st.ioas()
    afile = st.create_access(ioas)
    gone = Buffer(2 * PAGE)
    st.map(ioas, gone.va, 2 * PAGE, iova=0x300000)        # no domain: accepted lazily
    gone.close()
    assert st.test_err(uapi.IOMMU_TEST_OP_ACCESS_PAGES, AFD, fds={AFD: afile},
                       access_pages={"iova": 0x300000, "length": PAGE}) == errno.EFAULT
    st.map(ioas, buf.va, 2 * PAGE, iova=0x100000)
    st.map(ioas, buf.va + 2 * PAGE, 2 * PAGE, iova=0x102000)
    item = st.access_pages(afile, 0x101000, 2 * PAGE)    # spans both areas
    keep = st.access_pages(afile, 0x103000, PAGE)
    assert st.refs(buf.va, 4 * PAGE) == [0, 1, 1, 1]
    # IOAS_UNMAP of a pinned area: the access is told, drops every item on it, the unmap goes on.
    assert st.unmap(ioas, 0x100000, 2 * PAGE) == 2 * PAGE
    assert st.refs(buf.va, 4 * PAGE) == [0, 0, 0, 1]
    assert st.test_err(uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, AFD, fds={AFD: afile},
                       destroy_access_pages={"access_pages_id": item}) == errno.ENOENT
    assert set(afile.items) == {keep}
    # A pinned area cannot be split by type1 v1 UNMAP_DMA (§11.4).
    with pytest.raises(UapiError) as e:
        st.ctx.objects[ioas].split_at(0x102FFF)
    assert e.value.errno == errno.EINVAL


# -- ACCESS_RW ---------------------------------------------------------------------------------------
def test_access_rw_is_byte_exact_across_areas(st):
    a, b, user = Buffer(4 * PAGE), Buffer(4 * PAGE), Buffer(8 * PAGE)
    ioas = st.ioas()
    afile = st.create_access(ioas, flags=0)            # no pinning and no domain needed
    st.map(ioas, a.va + PAGE, 2 * PAGE, iova=0x500000)
    st.map(ioas, b.va, 3 * PAGE, iova=0x502000)
    start, n = 0x500000 + 2 * PAGE - 777, 777 + 5000
    data = os.urandom(n)
    user[3:3 + n] = data
    for flags in (0, uapi.MOCK_ACCESS_RW_SLOW_PATH):
        a[:] = bytes(4 * PAGE)
        b[:] = bytes(4 * PAGE)
        st.access_rw(afile, start, user.va + 3, n, uapi.MOCK_ACCESS_RW_WRITE | flags)
        assert a[3 * PAGE - 777:3 * PAGE] == data[:777] and b[:5000] == data[777:]
        assert not any(a[:3 * PAGE - 777]) and not any(b[5000:])
        back = 3 * PAGE + 5
        user[back:back + n + 16] = bytes(n + 16)
        b[100:103] = b"xyz"
        st.access_rw(afile, start, user.va + back, n, flags)
        assert user[back:back + n] == data[:877] + b"xyz" + data[880:]
        assert not any(user[back + n:back + n + 16])
    for close in (a, b, user):
        close.close()


def test_access_rw_rules_in_order(st, buf):
    ioas = st.ioas()
    afile = st.create_access(ioas, flags=0)
    st.map(ioas, buf.va, PAGE, iova=0x100000)
    st.map(ioas, buf.va + PAGE, PAGE, iova=0x101000, flags=RO)
    st.map(ioas, buf.va + 2 * PAGE, PAGE, iova=0x103000)
    rw = uapi.IOMMU_TEST_OP_ACCESS_RW
    W = uapi.MOCK_ACCESS_RW_WRITE
    user = Buffer(4 * PAGE)

    def err(fds={AFD: afile}, **f):
        f.setdefault("uptr", user.va)
        return st.test_err(rw, AFD, fds=fds, access_rw=f)
    assert err(None, iova=0x100000, length=(16 << 20) + 1) == errno.ENOMEM     # before the fd
    assert err(iova=0x100000, length=4, flags=2) == errno.EOPNOTSUPP
    assert err({AFD: errno.EBADF}, iova=0x100000, length=4) == errno.EBADFD
    assert err(iova=0x100000, length=4, flags=W, uptr=_unmapped_va()) == errno.EFAULT
    assert err(iova=0x100000, length=0) == errno.EINVAL
    assert err(iova=2 ** 64 - 2, length=4) == errno.EOVERFLOW
    assert err(iova=0x200000, length=4) == errno.ENOENT
    assert err(iova=0x101000, length=4, flags=W) == errno.EPERM        # read-only area
    st.access_rw(afile, 0x101000, user.va, 4)                         # reading it is fine
    ro = Buffer(PAGE)
    _mprotect(ro.va, PAGE, mmap.PROT_READ)
    assert err(iova=0x100000, length=4, uptr=ro.va) == errno.EFAULT    # read into read-only memory
    # A write running into a hole: the areas before it are written, then ENOENT.
    user[0:2 * PAGE + 8] = b"\xab" * (2 * PAGE + 8)
    buf[0:PAGE] = bytes(PAGE)
    assert err(iova=0x100000, length=PAGE + 8, flags=W) == errno.EPERM
    assert buf[0:PAGE] == b"\xab" * PAGE                               # the first area was written
    st.unmap(ioas, 0x101000, PAGE)
    buf[0:PAGE] = bytes(PAGE)
    assert err(iova=0x100000, length=PAGE + 8, flags=W) == errno.ENOENT
    assert buf[0:PAGE] == b"\xab" * PAGE
    _mprotect(ro.va, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    ro.close()
    user.close()


def test_set_temp_memory_limit(st):
    op = uapi.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT
    assert st.emu.test_memory_limit == 65536
    assert st.test_err(op, memory_limit={"limit": 11}) == errno.EINVAL
    st.test(op, memory_limit={"limit": 12})
    assert st.emu.test_memory_limit == 12


def test_access_replace_ioas(st, buf):
    src, dst = st.ioas(), st.ioas()
    afile = st.create_access(src)
    st.map(src, buf.va, 2 * PAGE, iova=0x100000)
    st.map(dst, buf.va, 2 * PAGE, iova=0x900000)
    st.access_pages(afile, 0x100000, 2 * PAGE)
    assert st.refs(buf.va, 2 * PAGE) == [1, 1]
    rep = uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS
    assert st.test_err(rep, AFD, fds={AFD: afile}, access_replace_ioas={"ioas_id": 99}) == errno.ENOENT
    odd = st.ioas()
    st.map(odd, buf.va, 2048, iova=0x800)
    assert st.test_err(rep, AFD, fds={AFD: afile}, access_replace_ioas={"ioas_id": odd}) == errno.EADDRINUSE
    assert afile.access.ioas is st.ctx.objects[src] and st.refs(buf.va, 2 * PAGE) == [1, 1]
    st.test(rep, AFD, fds={AFD: afile}, access_replace_ioas={"ioas_id": src})     # the same: no-op
    assert afile.items
    st.test(rep, AFD, fds={AFD: afile}, access_replace_ioas={"ioas_id": dst})
    assert not afile.items and st.refs(buf.va, 2 * PAGE) == [0, 0]             # pins released
    st.destroy(src)                                                             # no longer held
    assert st.destroy_err(dst) == errno.EBUSY
    out = Buffer(16)
    buf[4:8] = b"abcd"
    st.access_rw(afile, 0x900004, out.va, 4)
    assert out[0:4] == b"abcd"
    out.close()


# -- TRIGGER_IOPF (§10.1) ------------------------------------------------------------------------
def test_trigger_iopf_reaches_the_fault_queue(st):
    ioas = st.ioas()
    stdev, auto, idev = st.mock_domain(ioas, uapi.MOCK_FLAGS_DEVICE_PASID)
    trig = uapi.IOMMU_TEST_OP_TRIGGER_IOPF
    R_W = uapi.IOMMU_PGFAULT_PERM_READ | uapi.IOMMU_PGFAULT_PERM_WRITE
    iopf = {"dev_id": idev, "pasid": 0, "grpid": 2, "perm": R_W, "addr": 0xDEADBEAF}
    assert st.test_err(trig, trigger_iopf=dict(iopf, dev_id=stdev)) == errno.ENOENT
    st.test(trig, trigger_iopf=iopf)                     # no fault queue: dropped, still 0
    fault_id, ffile = st.fault_queue()
    hwpt = _fault_hwpt(st, idev, ioas, fault_id)
    st.test(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, mock_domain_replace={"pt_id": hwpt})
    st.test(trig, trigger_iopf=iopf)
    rec = ffile.read(st.caller, 80)
    flags, dev_id, pasid, grpid, perm, _, addr_, length, cookie = struct.unpack("<IIIIIIQII", rec)
    assert (flags, dev_id, pasid, grpid, perm, addr_, length, cookie) == (
        uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE, idev, 0, 2, R_W, 0xDEADBEAF, 0, 1)
    assert ffile.write(st.caller, struct.pack("<II", cookie, 0)) == 8
    # A PASID with a route: PASID_VALID; one without (PASID 1): dropped.
    st.test(uapi.IOMMU_TEST_OP_PASID_ATTACH, stdev, pasid_attach={"pasid": 5, "pt_id": hwpt})
    st.test(trig, trigger_iopf=dict(iopf, pasid=1))
    st.test(trig, trigger_iopf=dict(iopf, pasid=5, grpid=7))
    rec = ffile.read(st.caller, 80)
    assert len(rec) == 40
    flags, dev_id, pasid, grpid, *_ , cookie = struct.unpack("<IIIIIIQII", rec)
    assert (flags, dev_id, pasid, grpid, cookie) == (
        uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE | uapi.IOMMU_PGFAULT_FLAGS_PASID_VALID, idev, 5, 7, 1)
    # Detaching answers what is pending; the cookie is gone.
    st.test(uapi.IOMMU_TEST_OP_PASID_DETACH, stdev, pasid_detach={"pasid": 5})
    with pytest.raises(UapiError) as e:
        ffile.write(st.caller, struct.pack("<II", cookie, 0))
    assert e.value.errno == errno.EINVAL


def _fault_hwpt(st, idev, ioas, fault_id):
    c = new("iommu_hwpt_alloc", dev_id=idev, pt_id=ioas, fault_id=fault_id,
            flags=uapi.IOMMU_HWPT_ALLOC_FAULT_ID_VALID | uapi.IOMMU_HWPT_ALLOC_PASID)
    st.ioctl(uapi.IOMMU_HWPT_ALLOC, c)
    return c.out_hwpt_id


# -- PASID ops (§8) -------------------------------------------------------------------------------
def test_pasid_attach_check_detach(st):
    ioas = st.ioas()
    stdev, auto, idev = st.mock_domain(ioas, uapi.MOCK_FLAGS_DEVICE_PASID)
    pasid_hwpt = st.hwpt(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    plain_hwpt = st.hwpt(idev, ioas)
    att, chk = uapi.IOMMU_TEST_OP_PASID_ATTACH, uapi.IOMMU_TEST_OP_PASID_CHECK_HWPT

    def attach_err(sid, pasid, pt):
        return st.test_err(att, sid, pasid_attach={"pasid": pasid, "pt_id": pt})

    def check(pasid, hwpt):
        try:
            st.test(chk, stdev, pasid_check={"pasid": pasid, "hwpt_id": hwpt})
        except UapiError as e:
            return e.errno
        return 0
    assert attach_err(idev, 1, pasid_hwpt) == errno.ENOENT
    assert attach_err(stdev, 1, 99) == errno.ENOENT
    # The RID is on an auto domain, which is never PASID-compatible (§8).
    assert attach_err(stdev, 1, pasid_hwpt) == errno.EINVAL
    st.test(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, mock_domain_replace={"pt_id": pasid_hwpt})
    assert attach_err(stdev, 1, ioas) == errno.EINVAL                # an IOAS for a PASID
    assert attach_err(stdev, 1, plain_hwpt) == errno.EINVAL          # not PASID-compatible
    assert attach_err(stdev, 1 << 20, pasid_hwpt) == errno.EINVAL    # beyond 20 bits
    assert attach_err(stdev, 0, pasid_hwpt) == errno.EBUSY           # pasid 0 is the RID, attached
    c = st.test(att, stdev, pasid_attach={"pasid": 1, "pt_id": pasid_hwpt})
    assert c.pasid_attach.pt_id == pasid_hwpt
    assert attach_err(stdev, 1, pasid_hwpt) == errno.EBUSY           # attached already
    assert check(1, pasid_hwpt) == 0 and check(0, pasid_hwpt) == 0 and check(2, 0) == 0
    assert check(1, plain_hwpt) == errno.EINVAL and check(1, 0) == errno.EINVAL
    assert check(2, pasid_hwpt) == errno.EINVAL
    assert check(1, 99) == errno.ENOENT and check(1, ioas) == errno.EINVAL
    assert st.test_err(chk, idev, pasid_check={"pasid": 1, "hwpt_id": 0}) == errno.ENOENT
    # PASIDs attached: the RID may only move to a PASID-compatible HWPT.
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev,
                       mock_domain_replace={"pt_id": plain_hwpt}) == errno.EINVAL
    assert st.destroy_err(pasid_hwpt) == errno.EBUSY
    det = uapi.IOMMU_TEST_OP_PASID_DETACH
    assert st.test_err(det, idev, pasid_detach={"pasid": 1}) == errno.ENOENT
    st.test(det, stdev, pasid_detach={"pasid": 1})
    st.test(det, stdev, pasid_detach={"pasid": 1})                      # not attached: still 0
    assert check(1, 0) == 0
    # A mock device without the PASID flag takes no PASID.
    s2, _, _ = st.mock_domain(pasid_hwpt)
    assert attach_err(s2, 1, pasid_hwpt) == errno.EINVAL
    # Destroying the stdev detaches every PASID.
    st.test(att, stdev, pasid_attach={"pasid": 9, "pt_id": pasid_hwpt})
    st.destroy(stdev)
    st.destroy(s2)
    st.destroy(pasid_hwpt)


def test_pasid_replace_and_the_rigged_pasid_1024(st):
    ioas = st.ioas()
    stdev, _, idev = st.mock_domain(ioas, uapi.MOCK_FLAGS_DEVICE_PASID)
    h1 = st.hwpt(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    h2 = st.hwpt(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    st.test(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, mock_domain_replace={"pt_id": h1})
    rep = uapi.IOMMU_TEST_OP_PASID_REPLACE

    def replace(pasid, pt):
        try:
            c = st.test(rep, stdev, pasid_replace={"pasid": pasid, "pt_id": pt})
        except UapiError as e:
            return -e.errno
        return c.pasid_replace.pt_id

    def attached(pasid):
        h = st.ctx.objects[idev].attachments.get(pasid)
        return h.id if h else 0
    assert st.test_err(rep, idev, pasid_replace={"pasid": 3, "pt_id": h1}) == errno.ENOENT
    assert replace(3, h1) == -errno.EINVAL                               # nothing to replace
    st.test(uapi.IOMMU_TEST_OP_PASID_ATTACH, stdev, pasid_attach={"pasid": 3, "pt_id": h1})
    assert replace(3, h1) == h1                                          # the same: no-op
    assert replace(3, h2) == h2 and attached(3) == h2
    # PASID 1024: the attach arms the fake error, the next replace fails ENOMEM and
    # keeps the old HWPT, the one after succeeds; a detach disarms it.
    R = uapi.IOMMU_TEST_PASID_RESERVED
    st.test(uapi.IOMMU_TEST_OP_PASID_ATTACH, stdev, pasid_attach={"pasid": R, "pt_id": h1})
    assert replace(R, h2) == -errno.ENOMEM and attached(R) == h1
    assert replace(R, h2) == h2 and attached(R) == h2
    assert replace(R, h1) == -errno.ENOMEM and attached(R) == h2
    st.test(uapi.IOMMU_TEST_OP_PASID_DETACH, stdev, pasid_detach={"pasid": R})
    assert attached(R) == 0
    st.test(uapi.IOMMU_TEST_OP_PASID_ATTACH, stdev, pasid_attach={"pasid": R, "pt_id": h2})
    assert replace(R, h1) == -errno.ENOMEM and attached(R) == h2


# -- the whole context goes leaf-first -----------------------------------------------------------
def test_close_tears_everything_down(st, buf):
    ioas = st.ioas()
    stdev, hwpt, idev = st.mock_domain(ioas, uapi.MOCK_FLAGS_DEVICE_PASID)
    st.map(ioas, buf.va, 4 * PAGE)
    afile = st.create_access(ioas)
    opened = st.create_access(ioas)
    opened_file = st.emu.open(opened, st.caller)
    st.access_pages(afile, st.ctx.objects[ioas].areas.peekitem(0)[1].iova, PAGE)
    assert st.refs(buf.va, 2 * PAGE) == [1, 1]
    ctx = st.ctx
    st.iommufd.release()
    assert not ctx.closed and not afile.closed   # the open access fd holds the context
    st.new_context()      # MD_CHECK_REFS sees every context's pins
    assert st.refs(buf.va, 2 * PAGE) == [1, 1]
    opened_file.release()
    assert ctx.closed and opened.closed and afile.closed and not ctx.objects
    assert st.refs(buf.va, 2 * PAGE) == [0, 0]
    assert not any(d.name.startswith("mock") for ds in st.emu.by_rid.values() for d in ds)


# -- GET_HW_INFO of a mock device (§9.2) -------------------------------------------------------
def test_get_hw_info_of_a_mock_device(st):
    ioas = st.ioas()
    _, _, idev = st.mock_domain(ioas, uapi.MOCK_FLAGS_DEVICE_PASID)
    _, _, nodirty = st.mock_domain(ioas, uapi.MOCK_FLAGS_DEVICE_NO_DIRTY)
    data = ffi.new("char[12]", b"\xff" * 12)
    c = new("iommu_hw_info", dev_id=idev, data_len=12, data_uptr=addr(data))
    st.ioctl(uapi.IOMMU_GET_HW_INFO, c)
    assert (c.out_data_type, c.data_len, c.out_max_pasid_log2) == (0xFEEDBEEF, 8, 20)
    assert c.out_capabilities == uapi.IOMMU_HW_CAP_DIRTY_TRACKING      # not PCI: no PCI bits
    assert ffi.buffer(data)[:] == struct.pack("<II", 0, 0xDEADBEEF) + bytes(4)
    c = new("iommu_hw_info", dev_id=nodirty, flags=uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
            out_data_type=0xFEEDBEEF)
    st.ioctl(uapi.IOMMU_GET_HW_INFO, c)
    assert (c.out_capabilities, c.out_max_pasid_log2, c.data_len) == (0, 0, 8)
    c = new("iommu_hw_info", dev_id=idev, flags=uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
            out_data_type=uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD)
    assert st.err(uapi.IOMMU_GET_HW_INFO, c) == errno.EOPNOTSUPP


# -- DEV_CHECK_CACHE (§12) -----------------------------------------------------------------------
def test_dev_check_cache_rules_in_order(st):
    ioas = st.ioas()
    stdev, hwpt, idev = st.mock_domain(ioas)

    def check(dev_id, cache_id, value):
        return st.test_err(uapi.IOMMU_TEST_OP_DEV_CHECK_CACHE, dev_id,
                           check_dev_cache={"id": cache_id, "cache": value})

    for i in range(uapi.MOCK_DEV_CACHE_NUM):
        c = st.test(uapi.IOMMU_TEST_OP_DEV_CHECK_CACHE, idev,
                    check_dev_cache={"id": i, "cache": uapi.IOMMU_TEST_DEV_CACHE_DEFAULT})
        assert c.check_dev_cache.cache == uapi.IOMMU_TEST_DEV_CACHE_DEFAULT
    assert uapi.IOMMU_TEST_DEV_CACHE_DEFAULT == 0xBADDAD and uapi.MOCK_DEV_CACHE_NUM == 4
    # ENOENT: not a DEVICE (the stdev, the HWPT, nothing) comes before the cache id.
    for other in (stdev, hwpt, ioas, 999):
        assert check(other, 99, 0) == errno.ENOENT
    assert check(idev, 0, 0) == errno.EINVAL                      # another value
    assert check(idev, uapi.MOCK_DEV_CACHE_NUM, uapi.IOMMU_TEST_DEV_CACHE_DEFAULT) == errno.EINVAL
    assert check(idev, 0xFFFFFFFF, uapi.IOMMU_TEST_DEV_CACHE_DEFAULT) == errno.EINVAL
    # A topology device has no mock cache.
    vf, dev_id = st.bind(PLAIN)
    assert check(dev_id, 0, uapi.IOMMU_TEST_DEV_CACHE_DEFAULT) == errno.EINVAL


# -- NO_DIRTY refusals (the mock's attach_dev) -------------------------------------------------
def test_no_dirty_device_refused_by_a_dirty_tracking_hwpt(st):
    ioas = st.ioas()
    _, _, idev = st.mock_domain(ioas)
    dirty = st.hwpt(idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING | uapi.IOMMU_HWPT_ALLOC_PASID)
    before = dict(st.ctx.objects)
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, dirty,
                       mock_domain_flags={"dev_flags": uapi.MOCK_FLAGS_DEVICE_NO_DIRTY}) == errno.EINVAL
    assert st.ctx.objects == before                       # stdev, device and mock undone
    # The same device on a HWPT without dirty tracking is fine; a PASID attach
    # or a replace to the dirty-tracking one is refused, the old route kept.
    plain = st.hwpt(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    flags = uapi.MOCK_FLAGS_DEVICE_NO_DIRTY | uapi.MOCK_FLAGS_DEVICE_PASID
    stdev, hwpt, _ = st.mock_domain(plain, flags)
    assert hwpt == plain
    assert st.test_err(uapi.IOMMU_TEST_OP_PASID_ATTACH, stdev,
                       pasid_attach={"pasid": 100, "pt_id": dirty}) == errno.EINVAL
    st.test(uapi.IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev, pasid_check={"pasid": 100, "hwpt_id": 0})
    assert st.test_err(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev,
                       mock_domain_replace={"pt_id": dirty}) == errno.EINVAL
    st.test(uapi.IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev, pasid_check={"pasid": 0, "hwpt_id": plain})
    # A device that can track dirty pages attaches either way.
    s2, h2, _ = st.mock_domain(dirty, uapi.MOCK_FLAGS_DEVICE_PASID)
    assert h2 == dirty
